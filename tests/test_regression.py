"""Tests of the correlated regression and its closed-form posterior (evaluation/regression.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pmm_pymc.evaluation.regression import correlated_regression


def test_closed_form_posterior_is_the_models():
    """The model's log density is the quadratic form of the stated normal posterior.

    Checked against PyMC's own compiled log density and its gradient, independently of the
    conjugate formulas: the gradient vanishes at the stated mean, and differences of the
    log density between random points equal those of ``N(mean, cov)``. Exact up to
    round-off (tolerance 1e-8 relative).
    """
    problem = correlated_regression()
    model = problem.model
    logp = model.compile_logp()
    dlogp = model.compile_dlogp()
    precision = np.linalg.inv(problem.cov)

    def point(v):
        return {"intercept": np.array(v[0]), "slope": np.array(v[1])}

    np.testing.assert_allclose(dlogp(point(problem.mean)), 0.0, atol=1e-8)
    rng = np.random.default_rng(0)
    points = problem.mean + rng.standard_normal((5, 2)) * problem.sd
    model_lp = np.array([logp(point(v)) for v in points])
    exact_lp = np.array(
        [-0.5 * (v - problem.mean) @ precision @ (v - problem.mean) for v in points]
    )
    np.testing.assert_allclose(model_lp - model_lp[0], exact_lp - exact_lp[0], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("shift", "expected"), [(7.0, -0.990), (10.0, -0.995), (0.0, 0.0)])
def test_correlation_follows_the_shift(shift, expected):
    """The correlation is ``-shift / sqrt(shift^2 + 1)`` up to the prior (to 1e-3)."""
    assert correlated_regression(x_shift=shift).correlation == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_obs": 2}, "n_obs"),
        ({"n_obs": 10.5}, "n_obs"),
        ({"n_obs": True}, "n_obs"),
        ({"noise_sd": 0.0}, "noise_sd"),
        ({"prior_sd": -1.0}, "prior_sd"),
        ({"x_shift": np.inf}, "x_shift"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        correlated_regression(**kwargs)
