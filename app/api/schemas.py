"""Protocol types of the HTTP API (pydantic): /v1 galaxypaint endpoints and Open Inference Protocol v2."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.schema import COLUMNS, FEATURE_NAMES


class Halo(BaseModel):
    """One halo: the 5 features in schema units (``GET /v1/schema`` lists them)."""

    model_config = ConfigDict(extra="forbid")
    M_h: float = Field(description=COLUMNS["M_h"].description + f" [{COLUMNS['M_h'].unit}]")
    C_h: float = Field(description=COLUMNS["C_h"].description + f" [{COLUMNS['C_h'].unit}]")
    S_h: float = Field(description=COLUMNS["S_h"].description + f" [{COLUMNS['S_h'].unit}]")
    z_h: float = Field(description=COLUMNS["z_h"].description + f" [{COLUMNS['z_h'].unit}]")
    Delta3_h: float = Field(description=COLUMNS["Delta3_h"].description + f" [{COLUMNS['Delta3_h'].unit}]")


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
    predictions: dict[str, list[float]] = Field(description="target -> one value per halo, in request order")
    units: dict[str, str]
    models: list[ModelUsed]
    warnings: list[HaloWarning] = Field(description="halos with a feature outside the models' training range")


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


class PkJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str | None = Field(None, max_length=64, description="a succeeded paint job whose output is measured")
    path: DataPath | None = Field(None, description="or a painted catalog, relative to the server's data directory")
    truth: DataPath | None = Field(None, description="optional catalog with the true properties (same rows), "
                                                     "relative to the data directory")
    box: float = Field(205.0, gt=0, le=1e5, description="periodic box side [Mpc/h]")
    nmesh: int = Field(256, ge=8, le=2048, description="FFT mesh per side (the server's limit applies)")
    targets: list[str] | None = Field(None, max_length=8)
    edges: dict[str, Annotated[list[float], Field(min_length=3, max_length=3)]] | None = Field(
        None, max_length=8, description="property -> [lo, mid, hi]; default: the paper's")
    columns: str | None = Field(None, max_length=4096, description="column mapping NAME=SOURCE[,...]")

    @model_validator(mode="after")
    def _one_source(self) -> "PkJobRequest":
        if (self.job_id is None) == (self.path is None):
            raise ValueError("give exactly one of 'job_id' (a paint job) or 'path' (a catalog in the data directory)")
        return self


# ----------------------------------------------------------------------------- Open Inference Protocol v2


class TensorIn(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
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
    data: list[float]


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
