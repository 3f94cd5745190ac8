import numpy as np
import pytest
from scipy import stats

from training.metrics import ks_d, mse, normalized, pearson_r, permutation_importance, regression_metrics


def test_metrics_on_cases_with_known_answers():
    # Pearson r of y = x + e with independent unit-variance x and e is 1/sqrt(2)
    rng = np.random.default_rng(0)
    x, e = rng.standard_normal(200_000), rng.standard_normal(200_000)
    assert pearson_r(x + e, x) == pytest.approx(1 / np.sqrt(2), abs=5e-3)
    assert pearson_r(-3 * x + 1, x) == pytest.approx(-1.0)
    assert mse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 6.0])) == pytest.approx((0 + 4 + 9) / 3)
    # K-S D between {0, 1, 2} and {0.5, 1.5, 2.5}: the empirical CDFs differ by 1/3 at most
    assert ks_d(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5, 2.5])) == pytest.approx(1 / 3)
    assert ks_d(np.zeros(10), np.ones(10)) == 1.0 and ks_d(x, x) == 0.0
    # two normals a shift d apart: D -> 2 Phi(d/2) - 1
    assert ks_d(rng.standard_normal(100_000), rng.standard_normal(100_000) + 1.0) == pytest.approx(
        2 * stats.norm.cdf(0.5) - 1, abs=0.01)
    assert set(regression_metrics(x, e)) == {"pearson_r", "mse", "ks_d"}


def test_permutation_importance_of_a_known_linear_function():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 3))
    y = 3.0 * x[:, 0] + 1.0 * x[:, 1]

    def predict(z):
        return 3.0 * z[:, 0] + 1.0 * z[:, 1]

    mean, std = permutation_importance(predict, x, y, n_repeats=5, seed=0)
    # shuffling column j adds c_j^2 * 2 var(x_j) to the MSE
    assert mean[0] == pytest.approx(18.0, rel=0.08)
    assert mean[1] == pytest.approx(2.0, rel=0.08)
    assert mean[2] == 0.0 and std[2] == 0.0
    np.testing.assert_allclose(normalized(mean, 0), mean / mean[0])
