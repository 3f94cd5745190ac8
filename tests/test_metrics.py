import numpy as np
import pytest
from scipy import stats

from training.metrics import ks_d, mse, normalized, pearson_r, permutation_importance, regression_metrics


def test_metrics_match_scipy_on_known_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(500), rng.standard_normal(500)
    assert pearson_r(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
    assert pearson_r(a, 2 * a + 1) == pytest.approx(1.0)
    assert mse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 6.0])) == pytest.approx((0 + 4 + 9) / 3)
    assert ks_d(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)
    assert ks_d(np.zeros(10), np.ones(10)) == 1.0
    assert set(regression_metrics(a, b)) == {"pearson_r", "mse", "ks_d"}


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
