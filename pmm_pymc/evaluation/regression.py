"""A linear regression whose intercept and slope are strongly correlated, with its exact posterior.

A covariate far from zero (``x = x_shift + z`` with ``z`` standardised) makes the intercept
and the slope of ``y = intercept + slope x + noise`` nearly collinear: their posterior
correlation is about ``-x_shift / sqrt(x_shift^2 + 1)``, ``-0.990`` at the default
``x_shift = 7``. The noise scale is known and the priors are normal, so the posterior is
normal with a mean and covariance known in closed form (conjugacy): a reference without
Monte-Carlo error, for the condition-number cases of the benchmarks (a random walk needs
about ``kappa`` steps per independent draw on it, Hamiltonian-like dynamics about
``sqrt(kappa)``).

Examples
--------
.. code-block:: python

    from pmm_pymc.evaluation.regression import correlated_regression

    problem = correlated_regression()
    problem.correlation  # about -0.99
    with problem.model:
        ...
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pymc as pm

__all__ = ["CorrelatedRegression", "correlated_regression"]

VAR_NAMES = ("intercept", "slope")


class CorrelatedRegression(NamedTuple):
    """The model, its data and its exact normal posterior.

    Attributes
    ----------
    model : pymc.Model
        Free variables ``intercept`` and ``slope`` (scalars).
    x, y : numpy.ndarray, shape (n_obs,)
        Covariate and observations.
    mean : numpy.ndarray, shape (2,)
        Exact posterior mean of ``(intercept, slope)``.
    cov : numpy.ndarray, shape (2, 2)
        Exact posterior covariance.
    """

    model: pm.Model
    x: np.ndarray
    y: np.ndarray
    mean: np.ndarray
    cov: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        """Exact posterior standard deviations of ``(intercept, slope)``."""
        return np.sqrt(np.diagonal(self.cov))

    @property
    def correlation(self) -> float:
        """Exact posterior correlation of the intercept and the slope."""
        return float(self.cov[0, 1] / np.sqrt(self.cov[0, 0] * self.cov[1, 1]))


def correlated_regression(
    n_obs: int = 50,
    x_shift: float = 7.0,
    *,
    noise_sd: float = 1.0,
    prior_sd: float = 10.0,
    seed: int = 0,
) -> CorrelatedRegression:
    """Build the regression and its exact posterior.

    ``intercept, slope ~ N(0, prior_sd^2)`` independently and
    ``y_i ~ N(intercept + slope x_i, noise_sd^2)`` with ``x_i = x_shift + z_i``, ``z``
    standard normal draws standardised to mean 0 and variance 1 (so the correlation
    depends on ``x_shift`` only, up to the prior), and ``y`` simulated with intercept 1
    and slope 0.5. With the design ``X = [1, x]`` the posterior is
    ``N(mean, cov)``, ``cov = (X^T X / noise_sd^2 + I / prior_sd^2)^{-1}``,
    ``mean = cov X^T y / noise_sd^2``.

    Parameters
    ----------
    n_obs : int, default 50
        Observations (>= 3).
    x_shift : float, default 7.0
        Centre of the covariate; the correlation is about ``-x_shift / sqrt(x_shift^2 + 1)``.
    noise_sd, prior_sd : float
        Known noise scale and prior scale (> 0).
    seed : int, default 0
        Seed of the simulated covariate and observations.

    Returns
    -------
    CorrelatedRegression
    """
    if isinstance(n_obs, bool) or int(n_obs) != n_obs or n_obs < 3:
        raise ValueError(f"n_obs must be an integer >= 3, got {n_obs!r}")
    for name, value in (("noise_sd", noise_sd), ("prior_sd", prior_sd)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if not np.isfinite(x_shift):
        raise ValueError(f"x_shift must be finite, got {x_shift!r}")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(int(n_obs))
    z = (z - z.mean()) / z.std()
    x = float(x_shift) + z
    y = 1.0 + 0.5 * x + noise_sd * rng.standard_normal(int(n_obs))
    design = np.column_stack([np.ones_like(x), x])
    precision = design.T @ design / noise_sd**2 + np.eye(2) / prior_sd**2
    cov = np.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ design.T @ y / noise_sd**2
    with pm.Model() as model:
        intercept = pm.Normal(VAR_NAMES[0], 0.0, prior_sd)
        slope = pm.Normal(VAR_NAMES[1], 0.0, prior_sd)
        pm.Normal("y", mu=intercept + slope * x, sigma=noise_sd, observed=y)
    return CorrelatedRegression(model, x, y, mean, cov)
