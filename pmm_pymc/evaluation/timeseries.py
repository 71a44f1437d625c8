"""Time-series posteriors with a ``pytensor.scan`` recursion: GARCH(1,1) and ARMA(1,1).

Recursions of the log density over the observations are where the Langevin steps met
their stability limits (issue 8): a variance or error recursion makes the curvature
grow fast away from the bulk (an explosive ``alpha + beta`` or ``|theta| > 1``), much as
a funnel's does. Both models follow the Stan versions of posteriordb (``garch11``,
``arma11``), on data simulated here with a fixed seed, so tests and benchmarks share
them without shipping data.

* :func:`garch11_model`: ``r_t = mu + sqrt(h_t) eps_t``,
  ``h_t = omega + alpha (r_{t-1} - mu)^2 + beta h_{t-1}``, ``0 <= beta <= 1 - alpha``.
* :func:`arma11_model`: ``y_t = mu + phi y_{t-1} + theta err_{t-1} + err_t``,
  ``err_t ~ N(0, sigma^2)``.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt

from pmm_pymc._validate import check_int

__all__ = ["ARMA11_TRUTH", "GARCH11_TRUTH", "arma11_model", "garch11_model", "simulate_garch11"]

GARCH11_TRUTH: dict[str, float] = {"mu": 0.1, "omega": 0.2, "alpha": 0.2, "beta": 0.7}
"""The parameters the GARCH(1,1) data are simulated with (unconditional variance 2)."""

ARMA11_TRUTH: dict[str, float] = {"mu": 0.5, "phi": 0.6, "theta": 0.3, "sigma": 1.0}
"""The parameters the ARMA(1,1) data are simulated with."""


def simulate_garch11(n_obs: int, seed: int = 0) -> np.ndarray:
    """``n_obs`` returns of the GARCH(1,1) process with :data:`GARCH11_TRUTH`."""
    n_obs = check_int("n_obs", n_obs, 2)
    rng = np.random.default_rng(seed)
    p = GARCH11_TRUTH
    h = p["omega"] / (1.0 - p["alpha"] - p["beta"])
    r = np.empty(n_obs)
    for t in range(n_obs):
        r[t] = p["mu"] + np.sqrt(h) * rng.standard_normal()
        h = p["omega"] + p["alpha"] * (r[t] - p["mu"]) ** 2 + p["beta"] * h
    return r


def garch11_model(n_obs: int = 200, seed: int = 0) -> pm.Model:
    """The GARCH(1,1) posterior of posteriordb's ``garch11`` on simulated returns.

    Priors as Stan's (flat, bounded): ``mu`` flat, ``omega > 0`` flat, ``alpha`` uniform
    on ``[0, 1]``, ``beta`` uniform on ``[0, 1 - alpha]``; here with weakly informative
    ``mu ~ N(0, 10)`` and ``omega ~ HalfNormal(10)`` so the posterior is proper whatever
    the data. The first variance is the sample variance of the returns (Stan's data
    ``sigma1``), and the variance recursion is a ``pytensor.scan``.

    Parameters
    ----------
    n_obs : int, default 200
        Number of returns (>= 2).
    seed : int, default 0
        Seed of the simulated returns (:func:`simulate_garch11`).

    Returns
    -------
    pymc.Model
        Free variables ``mu``, ``omega``, ``alpha``, ``beta`` (4 unconstrained dimensions).
    """
    r = simulate_garch11(n_obs, seed)
    with pm.Model() as model:
        returns = pm.Data("returns", r)
        mu = pm.Normal("mu", 0.0, 10.0)
        omega = pm.HalfNormal("omega", 10.0)
        alpha = pm.Uniform("alpha", 0.0, 1.0)
        beta = pm.Uniform("beta", 0.0, 1.0 - alpha)

        def step(r_prev, h_prev, mu, omega, alpha, beta):
            return omega + alpha * pt.square(r_prev - mu) + beta * h_prev

        h0 = pt.as_tensor_variable(float(np.var(r)))
        h_rest = pytensor.scan(
            step,
            sequences=[returns[:-1]],
            outputs_info=[h0],
            non_sequences=[mu, omega, alpha, beta],
            return_updates=False,
        )
        h = pt.concatenate([h0[None], h_rest])
        pm.Normal("r", mu, pt.sqrt(h), observed=returns)
    return model


def arma11_model(n_obs: int = 200, seed: int = 0) -> pm.Model:
    """The ARMA(1,1) posterior of posteriordb's ``arma11`` on a simulated series.

    ``mu ~ N(0, 10)``, ``phi, theta ~ N(0, 2)``, ``sigma ~ HalfCauchy(2.5)``; the errors
    ``err_1 = y_1 - mu (1 + phi)``, ``err_t = y_t - mu - phi y_{t-1} - theta err_{t-1}``
    by a ``pytensor.scan``, each ``N(0, sigma^2)``. With ``|theta| > 1`` the error
    recursion is explosive: the log density falls off a cliff there.

    Parameters
    ----------
    n_obs : int, default 200
        Length of the series (>= 2).
    seed : int, default 0

    Returns
    -------
    pymc.Model
        Free variables ``mu``, ``phi``, ``theta``, ``sigma`` (4 unconstrained dimensions).
    """
    n_obs = check_int("n_obs", n_obs, 2)
    rng = np.random.default_rng(seed)
    p = ARMA11_TRUTH
    eps = p["sigma"] * rng.standard_normal(n_obs)
    y = np.empty(n_obs)
    y[0] = p["mu"] / (1 - p["phi"]) + eps[0]
    for t in range(1, n_obs):
        y[t] = p["mu"] + p["phi"] * y[t - 1] + p["theta"] * eps[t - 1] + eps[t]
    with pm.Model() as model:
        series = pm.Data("y", y)
        mu = pm.Normal("mu", 0.0, 10.0)
        phi = pm.Normal("phi", 0.0, 2.0)
        theta = pm.Normal("theta", 0.0, 2.0)
        sigma = pm.HalfCauchy("sigma", 2.5)

        def step(y_t, y_prev, err_prev, mu, phi, theta):
            return y_t - mu - phi * y_prev - theta * err_prev

        err0 = series[0] - mu * (1.0 + phi)
        err_rest = pytensor.scan(
            step,
            sequences=[series[1:], series[:-1]],
            outputs_info=[err0],
            non_sequences=[mu, phi, theta],
            return_updates=False,
        )
        err = pt.concatenate([err0[None], err_rest])
        pm.Potential("errors", pm.logp(pm.Normal.dist(0.0, sigma), err).sum())
    return model
