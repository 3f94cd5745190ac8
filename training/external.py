"""Registering models trained elsewhere: LightGBM text boosters (e.g. the paper authors' published ones)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from app.core.registry import ModelVersion, Registry
from app.core.schema import FEATURE_NAMES, TARGET_NAMES
from training import onnx_export as ox
from training.pipeline import TrainingError, build_graph, package_versions, Scaler

FIDELITY_TOL = 1e-5


def standardized_ranges(model_text: str, n_features: int) -> np.ndarray:
    """``feature_infos`` of a LightGBM text model as [n_features, 2] (min, max) in its input units."""
    m = re.search(r"^feature_infos=(.*)$", model_text, flags=re.M)
    out = np.tile([-3.0, 3.0], (n_features, 1))
    if m:
        for j, item in enumerate(m.group(1).split()[:n_features]):
            if item.startswith("[") and ":" in item:
                lo, hi = item.strip("[]").split(":")
                out[j] = float(lo), float(hi)
    return out


def import_lightgbm(path: str | Path, target: str, mean: np.ndarray, std: np.ndarray, name: str,
                    registry: Registry, n_check: int = 10_000, seed: int = 0,
                    check_rows: np.ndarray | None = None, alias: str | None = None) -> tuple[ModelVersion, float]:
    """Register a LightGBM text model that expects ``(x - mean) / std`` as an ONNX graph on raw features.

    The graph is checked against ``lightgbm.Booster.predict`` on ``n_check`` random halos spread over
    the booster's training ranges (plus ``check_rows``) and refused beyond 1e-5.
    """
    import lightgbm as lgb

    if target not in TARGET_NAMES:
        raise TrainingError(f"unknown target {target!r}: choose from {', '.join(TARGET_NAMES)}")
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"no such model file: {p}")
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    if mean.shape != (5,) or std.shape != (5,) or np.any(std <= 0):
        raise TrainingError("--mean and --std need 5 values each (std > 0), in the order " + ", ".join(FEATURE_NAMES))
    text = p.read_text()
    try:
        booster = lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise TrainingError(f"{p} is not a LightGBM text model: {exc}") from exc
    if booster.num_feature() != 5:
        raise TrainingError(f"{p} expects {booster.num_feature()} features, galaxypaint has 5")
    ranges = standardized_ranges(text, 5)
    rng = np.random.default_rng(seed)
    z = rng.uniform(ranges[:, 0], ranges[:, 1], size=(n_check, 5))
    x = z * std + mean
    if check_rows is not None:
        x = np.vstack([np.asarray(check_rows, float), x])
    expected = booster.predict((x - mean) / std)
    scaler = Scaler(mean, std)
    trees = ox.lightgbm_trees(booster)
    domain = {n: {"min": float(ranges[j, 0] * std[j] + mean[j]), "max": float(ranges[j, 1] * std[j] + mean[j])}
              for j, n in enumerate(FEATURE_NAMES)}
    data = build_graph(target, "raw", "external-lgbm", scaler,
                  [ox.tree_ensemble_nodes(trees, "scaled", ox.OUTPUT_NAME, average=False, prefix="lgbm_",
                                          float32_inputs=False)],
                  {"training_domain": domain, "source": p.name, "max_batch_rows": 65536})
    try:
        diff = ox.check_fidelity(data, x, expected, tol=FIDELITY_TOL)
    except ox.FidelityError as exc:
        raise TrainingError(f"{p.name}: {exc}; not registered") from exc
    mv = registry.publish(name, data, target=target, variant="raw", kind="external-lgbm",
                          metrics={"onnx_max_abs_diff": diff, "n_checked": len(x)},
                          hyperparameters={"n_trees": booster.num_trees(), "mean": mean.tolist(), "std": std.tolist()},
                          package_versions=package_versions(), feature_schema=list(FEATURE_NAMES),
                          training_domain=domain, extra={"source": str(p), "max_batch_rows": 65536},
                          aliases=(alias,) if alias else ())
    return mv, diff
