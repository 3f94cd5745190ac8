"""Settings, one pydantic-settings class; environment variables use the prefix ``GALAXYPAINT_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the token file ``galaxypaint serve`` writes when no token is configured (in the data directory, 0600)
TOKEN_FILE = ".galaxypaint-token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GALAXYPAINT_", env_file=None, extra="ignore")

    registry: Path = Field(Path("models"), description="model registry directory (SQLite + ONNX artefacts)")
    threads: int = Field(0, ge=0, le=1024, description="onnxruntime intra-op threads per session (0: the CPUs "
                                                       "the server may use, its affinity)")
    data_dir: Path = Field(Path("data"), description="server-side catalogs (jobs may only read below it) and "
                                                     "job outputs (under jobs/)")
    # --- access: two scopes.  ``admin`` moves aliases (and may do everything else); ``submit`` paints,
    # measures P(k) and reads job listings and results.  /v1/predict, /v2 inference, the schema and the
    # registry's read-only endpoints stay open.
    admin_token: SecretStr | None = Field(None, description="bearer token of the admin scope (alias moves); "
                                                            "generated into the token file when unset")
    api_token: SecretStr | None = Field(None, description="bearer token of the submit scope (jobs); the admin "
                                                          "token also works for it")
    allow_anonymous_writes: bool = Field(False, description="serve job submission and alias moves without any "
                                                           "token (explicit opt-in; never the default)")
    # --- bounds on what one request may ask for
    max_batch_halos: int = Field(100_000, ge=1, le=10_000_000,
                                 description="largest /v1/predict or /v2 infer batch (413 beyond)")
    max_json_bytes: int = Field(32 * 2**20, ge=1024, description="largest JSON request body, after any "
                                                                 "Content-Encoding is undone (413 beyond)")
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="largest catalog upload for a paint job, and the "
                                                               "largest decompressed size of any catalog a job reads")
    max_pk_nmesh: int = Field(512, ge=8, le=2048, description="largest P(k) mesh per side a job may ask for "
                                                              "(memory grows as nmesh^3: 512 needs ~2 GiB)")
    fused_graphs: bool = Field(True, description="mean mode runs a training run's multi-target graph (one "
                               "onnxruntime call, one shared kNN search) where it holds the pinned stacks; read "
                               "by the model object itself, so it also applies to job processes and Dask workers")
    max_loaded_models: int = Field(16, ge=1, le=1024, description="onnxruntime sessions kept loaded (least "
                                                                  "recently used evicted; production stacks kept)")
    json_offload_bytes: int = Field(256 * 2**10, ge=0, description="/v1/predict and /v2 infer bodies larger than "
                                    "this [bytes] are parsed and validated in a worker thread, not on the event "
                                    "loop (0: always)")
    # --- dynamic batching of /v1/predict and /v2 infer (app.api.batching)
    batch_window_ms: float = Field(1.0, ge=0, le=1000, description="longest wait [ms] for more requests to merge "
                                   "with (same pinned models and mode) into one onnxruntime call; 0 disables "
                                   "batching")
    batch_max_rows: int = Field(4096, ge=1, le=1_000_000, description="most halos in one merged call (a batch "
                                "this full is run at once)")
    batch_bypass_rows: int = Field(1024, ge=0, le=1_000_000, description="requests of more halos than this are "
                                   "run on their own, never queued")
    batch_eager: bool = Field(True, description="run a request at once when no call of its models and mode is "
                              "running (no added latency when idle); requests arriving meanwhile wait for it to "
                              "finish, or for the window, whichever comes first.  false: always wait the window "
                              "(or a full batch)")
    # --- jobs
    job_workers: int = Field(1, ge=1, le=64, description="jobs running at once (one process each)")
    job_time_limit_s: float = Field(6 * 3600.0, gt=0, description="a job running longer is killed and failed")
    job_memory_limit_mb: int = Field(8192, ge=64, description="a job whose worker exceeds this resident memory "
                                                              "is killed and failed")
    job_retention_hours: float = Field(7 * 24.0, gt=0, description="finished jobs' files are deleted after this")
    jobs_quota_bytes: int = Field(50 * 2**30, ge=2**20, description="disk used by job inputs and results; the "
                                                                   "oldest finished jobs' files go first beyond it")
    # --- observability
    log_json: bool = Field(True, description="structured JSON log lines (false: plain text)")
    # --- the browser pages under / (app.web): same token scopes as the API, through a session cookie
    web_ui: bool = Field(True, description="serve the web pages (registry, runs, predict, paint, jobs) under /; "
                                           "false: they answer 404 and only the API is served")
    web_cookie_secure: bool | None = Field(None, description="mark the session cookie Secure (HTTPS only); unset: "
                                                             "when the request came over HTTPS as the server sees "
                                                             "it (behind a TLS proxy: true, or forward "
                                                             "X-Forwarded-Proto from a trusted proxy)")
    web_session_hours: float = Field(8.0, gt=0, le=24 * 30, description="lifetime [h] of a web login's session "
                                                                      "cookie (the token is asked again after it)")

    @field_validator("admin_token", "api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `GALAXYPAINT_ADMIN_TOKEN=` in an env file means "not set", never "the empty token"
        return None if isinstance(value, str) and not value.strip() else value


def get_settings() -> Settings:
    return Settings()
