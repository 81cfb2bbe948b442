"""The 95% interval every meta-test result is reported with (``evaluation.mean_ci95``): a closed form and its
coverage on normal samples whose mean is known."""

import math

import numpy as np
import pytest

from jmaml.evaluation import mean_ci95

Z95 = 1.96  # the normal quantile of a two-sided 95% interval


@pytest.mark.parametrize("n", [2, 4, 9, 100])
def test_half_width_of_plus_and_minus_a_is_z_a_over_sqrt_n_minus_1(n):
    """``n`` (even) values ``+a, -a, ...``: mean 0, sample variance ``n a^2 / (n - 1)`` (ddof=1), standard error
    ``sqrt(variance / n) = a / sqrt(n - 1)``. ddof=0 would give ``a / sqrt(n)``, a missing sqrt(n)
    ``a sqrt(n / (n - 1))``; the sizes include n=4, where sqrt(n) and n / sqrt(n) differ as well."""
    a = 0.7
    values = np.where(np.arange(2 * (n // 2)) % 2 == 0, a, -a)
    mean, half = mean_ci95(values)
    assert mean == pytest.approx(0.0, abs=1e-15)
    assert half == pytest.approx(Z95 * a / math.sqrt(values.size - 1), rel=1e-12)


def test_one_value_has_no_interval():
    mean, half = mean_ci95(np.array([3.0]))
    assert mean == 3.0 and math.isnan(half)


def test_the_interval_covers_the_true_mean_95_percent_of_the_time():
    """4000 samples of 50 values from N(2, 3^2): the share of intervals holding 2 is 0.95 less the normal
    approximation's shortfall at n=50 (t quantile 2.01 instead of 1.96: coverage 0.945), with a binomial
    standard deviation of sqrt(0.95 * 0.05 / 4000) = 0.0034. Bound 0.93 to 0.96: over 4 standard deviations below,
    3 above. Without the sqrt(n) the intervals are 7x as wide (coverage 1); dividing by n, 7x as narrow (0.22);
    a standard deviation in place of the standard error, also 7x too wide."""
    rng = np.random.default_rng(0)
    samples = rng.normal(2.0, 3.0, size=(4000, 50))
    covered = [abs(mean - 2.0) <= half for mean, half in map(mean_ci95, samples)]
    assert 0.93 < np.mean(covered) < 0.96, np.mean(covered)
