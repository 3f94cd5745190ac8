"""The paper authors' published LightGBM boosters, registered as ONNX and checked against LightGBM."""

from __future__ import annotations

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

from app.core.catalogs import read_table  # noqa: E402
from app.core.model import LoadedModel  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import FEATURE_NAMES, TNG300_FEATURE_MOMENTS  # noqa: E402
from training.external import import_lightgbm  # noqa: E402
from training.pipeline import TrainingError  # noqa: E402

FILES = {"smass": "raw-LGBM-stellar_mass.txt", "sSFR": "raw-LGBM-sSFR.txt", "radius": "raw-LGBM-radius.txt",
         "color": "raw-LGBM-color.txt"}
MEAN = np.array([TNG300_FEATURE_MOMENTS[f][0] for f in FEATURE_NAMES])
STD = np.array([TNG300_FEATURE_MOMENTS[f][1] for f in FEATURE_NAMES])


@pytest.mark.parametrize("target", list(FILES))
def test_published_booster_onnx_matches_lightgbm(shared_dir, tmp_path, target):
    path = shared_dir / "published_models" / FILES[target]
    rows = read_table(shared_dir / "data" / "tng300_sample10.csv")
    x_real = rows[list(FEATURE_NAMES)].to_numpy()
    reg = Registry(tmp_path)
    mv, diff = import_lightgbm(path, target, MEAN, STD, f"tng300-{target}-lgbm", reg, check_rows=x_real)
    assert diff < 1e-5 and mv.metrics["n_checked"] == 10_010
    booster = lgb.Booster(model_file=str(path))
    model = LoadedModel.load(reg, mv)  # through the registry, sha256-verified, as the service does
    got = model.predict(x_real)
    np.testing.assert_allclose(got, booster.predict((x_real - MEAN) / STD), atol=1e-5)
    rng = np.random.default_rng(1)
    x = MEAN + STD * rng.standard_normal((10_000, 5))
    np.testing.assert_allclose(model.predict(x), booster.predict((x - MEAN) / STD), atol=1e-5)
    if target == "smass":  # real TNG300 galaxies: the authors' model is good on them
        assert np.corrcoef(got, rows["smass"])[0, 1] > 0.9


def test_import_errors(shared_dir, tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(TrainingError, match="5 values each"):
        import_lightgbm(shared_dir / "published_models" / FILES["smass"], "smass", MEAN[:4], STD, "x", reg)
    bad = tmp_path / "bad.txt"
    bad.write_text("not a model")
    with pytest.raises(TrainingError, match="not a LightGBM text model"):
        import_lightgbm(bad, "smass", MEAN, STD, "x", reg)
    assert reg.list_models() == []
