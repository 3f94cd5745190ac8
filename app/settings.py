"""Settings, one pydantic-settings class; environment variables use the prefix ``GALAXYPAINT_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GALAXYPAINT_", env_file=None, extra="ignore")

    registry: Path = Field(Path("models"), description="model registry directory (SQLite + ONNX artefacts)")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads per session (0: all cores)")
    data_dir: Path = Field(Path("data"), description="server-side catalogs (jobs may only read below it) and "
                                                     "job outputs (under jobs/)")
    api_token: SecretStr | None = Field(None, description="bearer token required to move aliases")
    max_batch_halos: int = Field(100_000, ge=1, description="largest /v1/predict or /v2 infer batch (413 beyond)")
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="largest catalog upload for a paint job")
    job_workers: int = Field(1, ge=1, description="worker processes running paint and P(k) jobs")


def get_settings() -> Settings:
    return Settings()
