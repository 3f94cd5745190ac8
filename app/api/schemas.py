"""Protocol types of the HTTP API (pydantic): /v1 galaxypaint endpoints and Open Inference Protocol v2."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator

from app.core.schema import COLUMNS, FEATURE_NAMES


class Halo(BaseModel):
    """One halo: the 5 features in schema units (``GET /v1/schema`` lists them)."""

    model_config = ConfigDict(extra="forbid")
    M_h: float = Field(description=COLUMNS["M_h"].description + f" [{COLUMNS['M_h'].unit}]")
    C_h: float = Field(description=COLUMNS["C_h"].description + f" [{COLUMNS['C_h'].unit}]")
    S_h: float = Field(description=COLUMNS["S_h"].description + f" [{COLUMNS['S_h'].unit}]")
    z_h: float = Field(description=COLUMNS["z_h"].description + f" [{COLUMNS['z_h'].unit}]")
    Delta3_h: float = Field(description=COLUMNS["Delta3_h"].description + f" [{COLUMNS['Delta3_h'].unit}]")


#: a halo id keying a draw: an integer (strict: no strings or floats) in the int64 or uint64 range
HaloId = Annotated[StrictInt, Field(ge=-(2**63), lt=2**64)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    halos: list[Halo] | None = Field(None, description="row form: one object per halo")
    columns: dict[str, list[float]] | None = Field(None, description="columnar form: feature name -> values")
    variant: Literal["raw", "smogn"] = Field("raw", validation_alias=AliasChoices("variant", "path"),
                                             description="training variant (raw or smogn); 'path' is its "
                                                         "deprecated name, accepted for one release")
    targets: list[str] | None = Field(None, max_length=8,
                                      description="subset of smass, sSFR, radius, color (default: all served)")
    model: str | None = Field(None, max_length=256,
                              description="alias (staging), version number, or full reference for one target")
    mode: Literal["mean", "sample", "quantiles"] = Field(
        "mean", description="mean: the stacks' E[property | halo] (default); sample: one galaxy drawn per halo from "
                            "the joint sampler, keyed by (seed, halo id); quantiles: the sampler's marginal quantiles "
                            "(outputs <target>_q<level>)")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the draws (mode sample only; default 0)")
    quantiles: list[float] | None = Field(None, min_length=1, max_length=99,
                                          description="quantile levels in percent, strictly between 0 and 100 "
                                                      "(mode quantiles only; default [16, 50, 84])")
    ids: list[HaloId] | None = Field(None, description="mode sample: one integer id per halo, distinct, in request "
                                                       "order (a halo's draw depends only on the seed and its id)")
    offset: HaloId | None = Field(None, description="mode sample, instead of ids: the halos' ids are offset, "
                                                    "offset + 1, ... in request order")

    @model_validator(mode="after")
    def _one_form(self) -> "PredictRequest":
        if (self.halos is None) == (self.columns is None):
            raise ValueError("give exactly one of 'halos' (list of objects) or 'columns' (feature -> list)")
        if self.columns is not None:
            missing = [f for f in FEATURE_NAMES if f not in self.columns]
            extra = [f for f in self.columns if f not in FEATURE_NAMES]
            if missing or extra:
                raise ValueError("columns must be exactly " + ", ".join(FEATURE_NAMES)
                                 + (f"; missing {', '.join(missing)}" if missing else "")
                                 + (f"; unknown {', '.join(extra)}" if extra else ""))
            lengths = {len(v) for v in self.columns.values()}
            if len(lengths) > 1:
                raise ValueError("columns must all have the same length")
        return self

    def n_halos(self) -> int:
        return len(self.halos) if self.halos is not None else len(next(iter(self.columns.values())))  # type: ignore


class PredictQuery(BaseModel):
    """Query parameters of ``/v1/predict`` with an Arrow IPC body: what a JSON request carries in its body
    (the halos' ids come from the stream's ``ID`` column).  A JSON request takes none of them.  Other query
    parameters are ignored, as before (e.g. a client's cache buster)."""

    variant: Literal["raw", "smogn"] = Field("raw", description="training variant (raw or smogn)")
    targets: list[Annotated[str, StringConstraints(max_length=256)]] | None = Field(
        None, max_length=8, description="subset of smass, sSFR, radius, color: repeated (targets=smass&targets=sSFR) "
                                        "or comma-separated (default: all served)")
    model: str | None = Field(None, max_length=256,
                              description="alias (staging), version number, or full reference for one target")
    mode: Literal["mean", "sample", "quantiles"] = Field("mean", description="as in the JSON request")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the draws (mode sample only; default 0)")
    quantiles: str | None = Field(None, max_length=1024, description="quantile levels in percent, comma-separated "
                                                                     "(mode quantiles only; default 16,50,84)")
    offset: int | None = Field(None, ge=-(2**63), lt=2**64, description="mode sample without an ID column: the "
                                                                        "halos' ids are offset, offset + 1, ...")

    def target_list(self) -> list[str] | None:
        if self.targets is None:
            return None
        return [t.strip() for item in self.targets for t in item.split(",") if t.strip()] or None


class ModelUsed(BaseModel):
    target: str
    name: str
    version: int
    sha256: str
    aliases: list[str]


class HaloWarning(BaseModel):
    index: int
    messages: list[str]


class PredictResponse(BaseModel):
    n_halos: int
    variant: str
    path: str = Field(description="deprecated: the same as 'variant'", json_schema_extra={"deprecated": True})
    predictions: dict[str, list[float]] = Field(description="output -> one value per halo, in request order: the "
                                                            "target (mean, or one draw in mode sample) or "
                                                            "<target>_q<level> (mode quantiles)")
    units: dict[str, str] = Field(description="output -> unit")
    models: list[ModelUsed]
    warnings: list[HaloWarning] = Field(description="halos with a feature outside the models' training range")
    mode: Literal["mean", "sample", "quantiles"] = "mean"
    seed: int | None = Field(None, description="mode sample: the seed of the draws")
    quantiles: list[float] | None = Field(None, description="mode quantiles: the levels (percent), sorted")


MAX_VERSION = 2**31 - 1


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", description="alias to move, e.g. production")
    version: int = Field(ge=1, le=MAX_VERSION)


class AliasMoved(BaseModel):
    name: str
    alias: str
    version: int
    uri: str


class JobInfo(BaseModel):
    id: str
    kind: str
    status: Literal["pending", "running", "succeeded", "failed", "canceled"]
    progress: float
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    expired: bool = Field(False, description="the job's files were deleted (retention period or quota)")


class JobPage(BaseModel):
    jobs: list[JobInfo] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


#: a path relative to the data directory: no NUL byte, bounded length
DataPath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
#: most sampled catalogs a P(k) job in mode sample may ask for (each costs one set of spectra)
MAX_PK_SEEDS = 50


class PkJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str | None = Field(None, max_length=64, description="a succeeded paint job whose output is measured")
    path: DataPath | None = Field(None, description="or a painted catalog, relative to the server's data directory")
    truth: DataPath | None = Field(None, description="optional catalog with the true properties (same rows), "
                                                     "relative to the data directory")
    box: float | None = Field(None, gt=0, le=1e5, allow_inf_nan=False,
                              description="periodic box side [Mpc/h]; default: the box the catalog's metadata "
                                          "records (required without)")
    nmesh: int = Field(256, ge=8, le=2048, description="FFT mesh per side (the server's limit applies)")
    targets: list[str] | None = Field(None, max_length=8)
    edges: dict[str, Annotated[list[float], Field(min_length=3, max_length=3)]] | None = Field(
        None, max_length=8, description="property -> [lo, mid, hi]; default: the paper's")
    columns: str | None = Field(None, max_length=4096, description="column mapping NAME=SOURCE[,...]")
    mode: Literal["mean", "sample"] = Field(
        "mean", description="mean (default): the catalog's <target>_pred columns against its true ones; sample: "
                            "an ensemble of S catalogs drawn by the joint sampler for the catalog's haloes (it needs "
                            "the 5 features, x, y, z and the true properties) against the true one")
    seeds: int | None = Field(None, ge=2, le=MAX_PK_SEEDS, description=f"mode sample (required): the number S of "
                              f"sampled catalogs, 2 to {MAX_PK_SEEDS}, drawn with the seeds seed0 .. seed0 + S - 1")
    seed0: int | None = Field(None, ge=0, lt=2**63, description="mode sample: the first seed (default 0)")
    model: str | None = Field(None, max_length=256, description="mode sample: the joint sampler's alias, version or "
                                                                "reference (default: production), pinned at submission")
    id_column: str | None = Field(None, min_length=1, max_length=256,
                                  description="mode sample: integer column keying each halo's draws (default: ID if "
                                              "present, else the row number in the catalog)")

    @model_validator(mode="after")
    def _one_source(self) -> "PkJobRequest":
        if (self.job_id is None) == (self.path is None):
            raise ValueError("give exactly one of 'job_id' (a paint job) or 'path' (a catalog in the data directory)")
        if self.mode == "sample":
            if self.seeds is None:
                raise ValueError(f"seeds: mode sample needs the number of sampled catalogs (2 to {MAX_PK_SEEDS})")
            if (self.seed0 or 0) + self.seeds - 1 >= 2**63:
                raise ValueError("seed0: the seeds seed0 .. seed0 + seeds - 1 must stay below 2**63")
            if self.targets:
                raise ValueError("targets: an ensemble measures the bins of all four properties; leave targets out")
        else:
            given = [f for f in ("seeds", "seed0", "model", "id_column") if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{given[0]}: {', '.join(given)} {'is' if len(given) == 1 else 'are'} for mode "
                                 "sample only")
        return self


# ----------------------------------------------------------------------------- Open Inference Protocol v2


class TensorIn(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(None, description="the values (flat or nested, row-major); absent when the "
                                                      "tensor's bytes follow the JSON header (binary tensor data "
                                                      "extension: parameters.binary_data_size)")
    parameters: dict[str, Any] | None = None


class OutputRequest(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorIn]
    outputs: list[OutputRequest] | None = None


class TensorOut(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | None = Field(None, description="the values; absent for an output sent as binary data "
                                                        "after the JSON header (parameters.binary_data_size)")
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[TensorOut]


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    parameters: dict[str, Any] | None = None


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="list only the model versions that can serve now")


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str | None = Field(None, description="why a version is UNAVAILABLE")
