"""Torch log-densities with known answers, for judging Langevin samplers.

Each :class:`TorchTarget` holds a batched torch ``log_prob`` (and a closed-form ``score``
where there is one), the exact moments or reference draws it is judged against, a bound on its
curvature in the bulk (from which :meth:`TorchTarget.default_step_size` is derived, the same
rule for every target) and overdispersed starting points.

``"gaussian"``
    A 10-dimensional Gaussian with a random rotation of variances log-spaced from 0.01 to 1
    (condition number 100) and a non-zero mean. Exact moments and draws.
``"banana"``
    A Rosenbrock-type (Haario's "twisted Gaussian") target in 2-D:
    ``x1 ~ N(0, 3^2)``, ``x2 | x1 ~ N(0.2 (x1^2 - 9), 1)``. Exact marginal moments
    (``sd(x2) = sqrt(1 + 2 b^2 s^4)``) and draws.
``"mixture"``
    The ``mixture2d`` testbed of :mod:`pmm_pymc.evaluation.testbeds` at ``t = 0``: nine
    components in the plane (eight thin arcs on the unit circle, a round one at the centre).
    Exact score, moments and draws; multimodal with modes far apart in units of their widths.
``"logistic"``
    A Bayesian logistic regression written in torch (an intercept and four standardised
    covariates, two of them correlated at 0.9; 200 observations; N(0, 2.5^2) priors), with
    reference draws of a long NUTS run of the same model in PyMC, shipped as data
    (``pmm_pymc/data/torch_targets/logistic.npz``, made by
    ``benchmarks/make_logistic_reference.py``; 10 chains of 1000 draws).

This module imports nothing of the samplers (:mod:`pmm_pymc.diffusion`, :mod:`pmm_pymc.mcmc`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from pmm_pymc._validate import check_int

__all__ = ["STEP_FRACTION", "TorchTarget", "get_target", "list_targets"]

#: The default step size is this fraction of 1 / (the target's curvature bound). Chosen on the
#: Gaussian (LMC's variance error in its stiffest direction is then 1 / (1 - 0.25) - 1 = 33%,
#: and PMM with K = 8 is well inside its stable range) and kept, unchanged, for the others.
STEP_FRACTION = 0.5

_DATA = ("data", "torch_targets")


@dataclass(frozen=True)
class TorchTarget:
    """A torch log-density with known answers.

    Attributes
    ----------
    name, description : str
    event_shape : tuple of int
        Shape of one draw (``x`` is ``(chains, *event_shape)``).
    log_prob : callable
        ``log_prob(x) -> (chains,)``, differentiable by autograd, on any device and float
        dtype.
    score : callable or None
        ``score(x)``, the gradient of ``log_prob`` in closed form, where known.
    curvature : float
        A bound on the largest eigenvalue of the negative Hessian of ``log_prob`` over the
        bulk of the target (where the chains spend their time).
    var_name : str
        Name of the variable in a DataTree.
    dims : tuple of str
        Names of the event dims.
    coords : dict
        Coordinates of the event dims.
    mean, sd : numpy.ndarray or None
        Exact mean and standard deviation of each component, where known.
    covariance : numpy.ndarray or None
        Exact covariance matrix, where known.
    exact_sample : callable or None
        ``exact_sample(n, generator) -> (n, *event_shape)`` float64 exact draws, where known.
    reference_draws : numpy.ndarray or None
        ``(chain, draw, *event_shape)`` reference draws (when there are no exact moments).
    """

    name: str
    description: str
    event_shape: tuple[int, ...]
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor], torch.Tensor] | None
    curvature: float
    var_name: str = "x"
    dims: tuple[str, ...] = ("dim",)
    coords: dict[str, Any] = field(default_factory=dict)
    mean: np.ndarray | None = None
    sd: np.ndarray | None = None
    covariance: np.ndarray | None = None
    exact_sample: Callable[[int, torch.Generator], torch.Tensor] | None = None
    reference_draws: np.ndarray | None = None

    def default_step_size(self) -> float:
        """``STEP_FRACTION / curvature``: the step both PMM and LMC get by default."""
        return STEP_FRACTION / self.curvature

    def reference_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and sd each component is judged against: exact, or of the reference draws."""
        if self.mean is not None and self.sd is not None:
            return self.mean, self.sd
        flat = np.asarray(self.reference_draws).reshape(-1, *self.event_shape)
        return flat.mean(axis=0), flat.std(axis=0, ddof=1)

    def initial_points(
        self,
        chains: int,
        seed: int | None = 0,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Overdispersed starting points: ``mean + 2 sd z`` with ``z ~ N(0, I)``.

        Parameters
        ----------
        chains : int
        seed : int, optional
        dtype : torch.dtype, default torch.float64
        device : torch.device or str, default "cpu"

        Returns
        -------
        torch.Tensor, shape (chains, *event_shape)
        """
        chains = check_int("chains", chains, 1)
        mean, sd = self.reference_moments()
        z = np.random.default_rng(seed).standard_normal((chains, *self.event_shape))
        x0 = np.asarray(mean)[None] + 2.0 * np.asarray(sd)[None] * z
        return torch.as_tensor(x0, dtype=dtype, device=device)


class _Params:
    """Float64 CPU parameters, moved once per (device, dtype) to where ``x`` lives."""

    def __init__(self, **tensors: np.ndarray | torch.Tensor) -> None:
        self._cpu = {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in tensors.items()
        }
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    def like(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = {
                k: v.to(device=x.device, dtype=x.dtype) for k, v in self._cpu.items()
            }
        return self._cache[key]


def _check_x(x: torch.Tensor, event_shape: tuple[int, ...], name: str) -> None:
    if (
        not torch.is_tensor(x)
        or tuple(x.shape[1:]) != event_shape
        or x.ndim != 1 + len(event_shape)
    ):
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(
            f"the {name!r} target takes x of shape (chains, {', '.join(map(str, event_shape))}), "
            f"got {shape}"
        )


# ----------------------------------------------------------------------------- gaussian
def _gaussian() -> TorchTarget:
    d = 10
    rng = np.random.default_rng(0)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    var = np.logspace(-2, 0, d)
    cov = (q * var) @ q.T
    prec = (q / var) @ q.T
    mu = np.linspace(-1.0, 1.0, d)
    chol = np.linalg.cholesky(cov)
    p = _Params(mu=mu, prec=prec)

    def score(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (d,), "gaussian")
        q_ = p.like(x)
        return -(x - q_["mu"]) @ q_["prec"]

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (d,), "gaussian")
        q_ = p.like(x)
        dx = x - q_["mu"]
        return -0.5 * ((dx @ q_["prec"]) * dx).sum(1)

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return torch.as_tensor(mu) + z @ torch.as_tensor(chol).T

    return TorchTarget(
        name="gaussian",
        description="10-d Gaussian, rotated variances 0.01..1 (condition number 100)",
        event_shape=(d,),
        log_prob=log_prob,
        score=score,
        curvature=float(1.0 / var.min()),
        mean=mu,
        sd=np.sqrt(np.diag(cov)),
        covariance=cov,
        exact_sample=sample,
    )


# ----------------------------------------------------------------------------- banana
def _banana(s: float = 3.0, b: float = 0.2) -> TorchTarget:
    def log_prob(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (2,), "banana")
        x1, x2 = x[:, 0], x[:, 1]
        return -0.5 * (x1 / s) ** 2 - 0.5 * (x2 - b * (x1**2 - s**2)) ** 2

    def score(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (2,), "banana")
        x1, x2 = x[:, 0], x[:, 1]
        r = x2 - b * (x1**2 - s**2)
        return torch.stack([-x1 / s**2 + 2.0 * b * x1 * r, -r], dim=1)

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x1 = s * z[:, 0]
        return torch.stack([x1, z[:, 1] + b * (x1**2 - s**2)], dim=1)

    # negative Hessian: [[1/s^2 - 2 b r + 4 b^2 x1^2, -2 b x1], [-2 b x1, 1]]; at three sd
    # (|x1| = 3 s, |r| = 3) its largest eigenvalue is below 1 + 36 b^2 s^2 + 6 b + 1/s^2.
    curvature = 1.0 + 36.0 * b**2 * s**2 + 6.0 * b + 1.0 / s**2
    return TorchTarget(
        name="banana",
        description=f"2-d banana: x1 ~ N(0, {s:g}^2), x2 | x1 ~ N({b:g} (x1^2 - {s**2:g}), 1)",
        event_shape=(2,),
        log_prob=log_prob,
        score=score,
        curvature=curvature,
        mean=np.zeros(2),
        sd=np.array([s, math.sqrt(1.0 + 2.0 * b**2 * s**4)]),
        exact_sample=sample,
    )


# ----------------------------------------------------------------------------- mixture
def _mixture() -> TorchTarget:
    from pmm_pymc.evaluation.testbeds import get_testbed

    tb = get_testbed("mixture2d")

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (2,), "mixture")
        return tb.log_prob(x)

    def score(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (2,), "mixture")
        return tb.score(x, 1.0)

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        return tb.sample(n, generator=generator, dtype=torch.float64)

    return TorchTarget(
        name="mixture",
        description="the mixture2d testbed at t = 0: 9 components, 8 thin arcs on a circle",
        event_shape=(2,),
        log_prob=log_prob,
        score=score,
        curvature=float(1.0 / tb.eigenvalues.min()),
        mean=tb.mean.numpy(),
        sd=np.sqrt(np.diag(tb.covariance.numpy())),
        covariance=tb.covariance.numpy(),
        exact_sample=sample,
    )


# ----------------------------------------------------------------------------- logistic
@lru_cache(maxsize=1)
def _logistic_data() -> dict[str, np.ndarray]:
    path = resources.files("pmm_pymc").joinpath(*_DATA, "logistic.npz")
    with resources.as_file(path) as p, np.load(p) as f:
        return {k: f[k] for k in f.files}


def _logistic() -> TorchTarget:
    data = _logistic_data()
    X, y, prior_sd = data["X"], data["y"].astype(np.float64), float(data["prior_sd"])
    d = X.shape[1]
    p = _Params(X=X, y=y)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        _check_x(x, (d,), "logistic")
        q_ = p.like(x)
        eta = x @ q_["X"].T  # (chains, n)
        lik = (q_["y"] * eta - torch.nn.functional.softplus(eta)).sum(1)
        return lik - 0.5 * (x**2).sum(1) / prior_sd**2

    # negative Hessian X^T diag(p (1 - p)) X + I / prior_sd^2 <= X^T X / 4 + I / prior_sd^2
    curvature = float(np.linalg.eigvalsh(X.T @ X).max() / 4.0 + 1.0 / prior_sd**2)
    names = ["intercept"] + [f"x{i}" for i in range(1, d)]
    return TorchTarget(
        name="logistic",
        description=f"Bayesian logistic regression, {X.shape[0]} observations, {d} coefficients",
        event_shape=(d,),
        log_prob=log_prob,
        score=None,
        curvature=curvature,
        var_name="beta",
        dims=("coef",),
        coords={"coef": names},
        reference_draws=data["draws"],
    )


_REGISTRY: dict[str, Callable[[], TorchTarget]] = {
    "banana": _banana,
    "gaussian": _gaussian,
    "logistic": _logistic,
    "mixture": _mixture,
}


def list_targets() -> list[str]:
    """Names accepted by :func:`get_target`."""
    return sorted(_REGISTRY)


def get_target(name: str) -> TorchTarget:
    """A bundled torch target.

    Parameters
    ----------
    name : str
        One of :func:`list_targets`: ``"banana"``, ``"gaussian"``, ``"logistic"``,
        ``"mixture"``.

    Returns
    -------
    TorchTarget

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown torch target {name!r}; valid: {', '.join(list_targets())}")
    return _REGISTRY[name]()
