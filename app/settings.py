"""Settings, one pydantic-settings class; environment variables use the prefix ``GALAXYPAINT_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GALAXYPAINT_", env_file=None, extra="ignore")

    registry: Path = Field(Path("models"), description="model registry directory (SQLite + ONNX artefacts)")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads per session (0: all cores)")


def get_settings() -> Settings:
    return Settings()
