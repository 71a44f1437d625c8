"""The one Langevin transition (PMM or LMC) for one chain or many, as a pure function.

Every MCMC sampler of the package runs :func:`transition`: the PyMC step methods
(:mod:`pmm_pymc.mcmc.steps`) with a batch of one row, :func:`pmm_pymc.mcmc.chains.sample_chains`
with one row per chain. In the manner of BlackJAX's kernels it is a function
``(draws, state, params) -> (state, info)`` over NamedTuples: the random numbers
(:class:`LangevinDraws`) are drawn by the caller with :func:`draw`, the model enters only
through ``logp_grad(points) -> (logp, grad)`` on rows, and everything the transition learns
about the move (its would-be acceptance, the curvature seen at the midpoints, whether a
midpoint or the proposal was non-finite) comes back in :class:`LangevinInfo` for the
warm-up (:mod:`pmm_pymc.mcmc.warmup`) and the sampler's stats.

One transition is one PMM block of :func:`pmm_pymc.core.pmm_step` with the Langevin
coefficients ``langevin_chain(step_size, K)`` (``K = 1``: one LMC step), followed by

* the stability guard: when ``step_size`` times the secant curvature seen at a fired
  midpoint exceeds :func:`pmm_stability_limit`, the frozen-drift endpoint is taken, which
  is exactly the LMC step of the same size with the same noise;
* the divergence rule: a non-finite value at a fired midpoint or at the proposal, or an
  energy error (minus the log would-be MALA ratio, :func:`log_accept_ratio`) above
  ``max_energy_error``, rejects the move;
* during warm-up only (``params.adjust``), a Metropolis adjustment with the would-be MALA
  acceptance, so a step size that dual averaging tries too large cannot throw a chain out
  of the typical set.

Random numbers, per transition and in this order (:func:`draw`): the firing uniforms
``U`` of shape ``(K - 1, B)`` (midpoint ``i`` fires for row ``m`` when ``U[i - 1, m] < 1/K``),
the sub-step noise ``Z`` of shape ``(K, B, d)``, and, when the move is adjusted, ``B``
uniforms for the acceptance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from pmm_pymc.core import AffineChain, fired_from_mask, langevin_chain, pmm_step

__all__ = [
    "LangevinDraws",
    "LangevinInfo",
    "LangevinParams",
    "LangevinState",
    "Metric",
    "draw",
    "gap_noise",
    "log_accept_ratio",
    "pmm_stability_limit",
    "transition",
]

LogpGrad = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``logp_grad(points)``: log density ``(n,)`` and gradient ``(n, d)`` at rows ``(n, d)``."""

GAP_NOISE_MIN_SIZE = 8192
"""``B x d`` from which :func:`draw` draws the noise per gap between firings (measured faster)."""


class LangevinState(NamedTuple):
    """Where the chains are: rows of points with their log density and gradient.

    Attributes
    ----------
    x : numpy.ndarray, shape (B, d)
    logp : numpy.ndarray, shape (B,)
    grad : numpy.ndarray, shape (B, d)
        ``grad log pi(x)``, not preconditioned.
    """

    x: np.ndarray
    logp: np.ndarray
    grad: np.ndarray


class Metric(NamedTuple):
    """A preconditioner ``M^{-1}`` (symmetric positive definite) and its factors.

    Build it with :meth:`identity`, :meth:`diag` or :meth:`dense`.

    Attributes
    ----------
    inv_mass : numpy.ndarray or None
        ``None`` (the identity), the diagonal of ``M^{-1}`` ``(d,)``, or ``M^{-1}`` ``(d, d)``.
    sqrt : numpy.ndarray or None
        ``M^{-1/2}``: the square root of the diagonal, or the lower Cholesky factor.
    inv_sqrt : numpy.ndarray or None
        The inverse of ``sqrt`` (dense only), for norms in ``M``.
    """

    inv_mass: np.ndarray | None
    sqrt: np.ndarray | None
    inv_sqrt: np.ndarray | None

    @classmethod
    def identity(cls) -> Metric:
        """``M = I``."""
        return cls(None, None, None)

    @classmethod
    def diag(cls, inv_mass: np.ndarray) -> Metric:
        """A diagonal ``M^{-1}`` from its diagonal."""
        inv_mass = np.asarray(inv_mass, dtype=np.float64)
        return cls(inv_mass, np.sqrt(inv_mass), None)

    @classmethod
    def dense(cls, inv_mass: np.ndarray) -> Metric:
        """A dense ``M^{-1}``; raises ``numpy.linalg.LinAlgError`` if it is not SPD."""
        inv_mass = np.asarray(inv_mass, dtype=np.float64)
        chol = np.linalg.cholesky(inv_mass)
        return cls(inv_mass, chol, np.linalg.inv(chol))

    @property
    def kind(self) -> str | None:
        """``None``, ``"diag"`` or ``"dense"``."""
        if self.inv_mass is None:
            return None
        return "diag" if self.inv_mass.ndim == 1 else "dense"

    def drift(self, grad: np.ndarray) -> np.ndarray:
        """``M^{-1} g`` for each row of ``grad``."""
        if self.inv_mass is None:
            return grad
        if self.inv_mass.ndim == 1:
            return grad * self.inv_mass
        return grad @ self.inv_mass  # symmetric

    def scale_noise(self, z: np.ndarray) -> np.ndarray:
        """``M^{-1/2} z`` along the last axis."""
        if self.sqrt is None:
            return z
        if self.sqrt.ndim == 1:
            return z * self.sqrt
        return z @ self.sqrt.T

    def norm_sq(self, v: np.ndarray) -> np.ndarray:
        """``v^T M v`` for each row of ``v``."""
        if self.inv_mass is None:
            return np.einsum("...i,...i->...", v, v)
        if self.inv_mass.ndim == 1:
            return np.einsum("...i,...i->...", v, v / self.inv_mass)
        w = v @ self.inv_sqrt.T
        return np.einsum("...i,...i->...", w, w)


class LangevinParams(NamedTuple):
    """What a transition is run with.

    Attributes
    ----------
    step_size : float or numpy.ndarray of shape (B,)
        ``eta``, with ``x' = x + eta M^{-1} grad logp(x) + sqrt(2 eta) M^{-1/2} xi`` for LMC;
        one for all rows, or one per row.
    K : int
        PMM sub-steps (1: LMC).
    metric : Metric
    max_energy_error : float
        A larger energy error rejects the move as a divergence.
    adjust : bool
        Metropolis-adjust the move with its would-be MALA acceptance (warm-up only).
    """

    step_size: float | np.ndarray
    K: int
    metric: Metric
    max_energy_error: float = 1000.0
    adjust: bool = False


class LangevinDraws(NamedTuple):
    """The random numbers of one transition (see the module docstring for their order).

    Attributes
    ----------
    fire : numpy.ndarray of bool, shape (K, B)
        ``fire[i, m]``: row ``m``'s midpoint ``i`` fires (row 0 is always False).
    noise : numpy.ndarray, shape (K, B, d)
        Sub-step noise before preconditioning, ``N(0, I)`` per sub-step (or its gap-wise
        equivalent, :func:`gap_noise`).
    accept : numpy.ndarray, shape (B,), or None
        Uniforms for the warm-up adjustment; ``None`` when the move is not adjusted.
    """

    fire: np.ndarray
    noise: np.ndarray
    accept: np.ndarray | None


class LangevinInfo(NamedTuple):
    """What one transition did, per row.

    Attributes
    ----------
    accept_prob : numpy.ndarray, shape (B,)
        The would-be MALA acceptance ``min(1, exp(-energy_error))``; 0 for a divergence.
    energy_error : numpy.ndarray, shape (B,)
        Minus the log would-be MALA ratio of the move (``inf`` where not finite).
    diverging : numpy.ndarray of bool, shape (B,)
    moved : numpy.ndarray of bool, shape (B,)
        The chain moved (not diverging and, when adjusted, accepted).
    midpoint_finite : numpy.ndarray of bool, shape (B,)
        The log density and gradient were finite at every fired midpoint.
    proposal_finite : numpy.ndarray of bool, shape (B,)
        ... and at the proposal (False where it was not evaluated).
    n_midpoints : numpy.ndarray of int, shape (B,)
        Fired midpoints (each one gradient evaluation).
    n_steps : numpy.ndarray of int, shape (B,)
        Gradient evaluations of this transition: the midpoints and the proposal.
    stiffness : numpy.ndarray, shape (B,)
        The largest secant estimate of the preconditioned drift's Lipschitz constant seen
        between the start and a fired midpoint (0 when nothing fired).
    fallback : numpy.ndarray of bool, shape (B,)
        The stability guard took the LMC endpoint.
    fine_energy_error : numpy.ndarray, shape (B,)
        The energy error of the move seen as ``K`` Langevin sub-steps of size ``eta/K``:
        minus :func:`log_accept_ratio` with the sub-step size ``eta/K`` (``inf`` where the
        proposal is not finite; ``energy_error`` itself when ``K = 1``). It is the sum of the
        fine chain's sub-step energy errors with the line integral of the gradient along the
        fine path taken by the trapezoid rule on the chord ``x -> x'`` (the gradient-norm
        terms telescope); on a Gaussian target the trapezoid rule is exact and it equals the
        fine chain's path energy error. Its mean square per dimension tracks the
        discretisation bias of the fine chain (:func:`pmm_pymc.mcmc.warmup.bias_terms`).
    midpoint_variance : numpy.ndarray, shape (B,)
        An unbiased estimate, from the fired midpoints (Bernoulli thinning), of the variance
        of PMM's midpoint correction given the frozen-drift path, in the norm of ``M``:
        ``(K - 1) eta^2 / K * sum_{fired i} ||b_i - b_0||_M^2`` (0 for LMC). The randomness
        of the correction adds this much variance to each move, PMM's bias beyond the fine
        chain's.
    """

    accept_prob: np.ndarray
    energy_error: np.ndarray
    diverging: np.ndarray
    moved: np.ndarray
    midpoint_finite: np.ndarray
    proposal_finite: np.ndarray
    n_midpoints: np.ndarray
    n_steps: np.ndarray
    stiffness: np.ndarray
    fallback: np.ndarray
    fine_energy_error: np.ndarray
    midpoint_variance: np.ndarray


def pmm_stability_limit(K: int) -> float:
    """The largest ``eta L`` at which PMM(eta, K) is mean-square stable on a Gaussian.

    On the drift ``b(x) = -L x`` one PMM block is ``x' = A x + B`` with
    ``A = 1 - h + h^2 S``, ``h = eta L`` and ``S = sum_{fired i} i/K`` (the midpoints
    ``H_i ~ Bernoulli(1/K)`` independent). The second moment contracts iff
    ``E[A^2] < 1``; this returns the root of ``E[A^2] = 1`` in ``h``. It is 2 for
    ``K <= 2`` (LMC's limit) and shrinks with ``K``: 1.52 for ``K = 4``, 1.35 for
    ``K = 8``, towards about 1.2.

    Parameters
    ----------
    K : int
        Number of sub-steps.

    Returns
    -------
    float
    """
    p = 1.0 / K
    i_over_k = np.arange(1, K) / K
    mean_s = p * i_over_k.sum()
    second_s = p * (1 - p) * np.sum(i_over_k**2) + mean_s**2

    def excess(h: float) -> float:  # E[A^2] - 1
        return (1 - h) ** 2 + 2 * (1 - h) * h**2 * mean_s + h**4 * second_s - 1.0

    lo, hi = 1e-6, 2.0
    if excess(hi) <= 0:
        return 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return float(lo)


_stability_limit = functools.lru_cache(maxsize=64)(pmm_stability_limit)
_chain = functools.lru_cache(maxsize=64)(langevin_chain)


def log_accept_ratio(
    logp: np.ndarray,
    logp_new: np.ndarray,
    x: np.ndarray,
    x_new: np.ndarray,
    grad: np.ndarray,
    grad_new: np.ndarray,
    step_size: float | np.ndarray,
    metric: Metric,
) -> np.ndarray:
    """Log MALA acceptance ratio of each move ``x -> x_new``, computed and not applied.

    MALA is HMC with one leapfrog step of size ``sqrt(2 eta)``, and this ratio is minus
    that step's energy error; the acceptance probability is ``min(1, exp(ratio))``.
    With ``b = M^{-1} g`` and ``delta = x' - x`` the two Gaussian proposal densities
    combine into one inner product (``||v||_M^2 = v^T M v``)::

        ||x - x' - eta b'||_M^2 - ||x' - x - eta b||_M^2 = eta (2 delta + eta (b' - b))^T (g + g')

    so no division by ``M^{-1}`` is needed.

    Parameters
    ----------
    logp, logp_new : numpy.ndarray, shape (B,)
        ``log pi`` at the starts and the ends of the moves.
    x, x_new, grad, grad_new : numpy.ndarray, shape (B, d)
        The starts and ends, and ``grad log pi`` there (not preconditioned).
    step_size : float or numpy.ndarray, shape (B,)
        ``eta``, one for all rows or one per row.
    metric : Metric

    Returns
    -------
    numpy.ndarray, shape (B,)
        ``log pi(x') + log q(x | x') - log pi(x) - log q(x' | x)``; ``-inf`` where it is
        not finite (an overflowing move counts as a certain rejection).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        diff = metric.drift(grad_new - grad)
        diff = diff * np.asarray(step_size)[..., None] + 2.0 * (x_new - x)
        log_ratio = logp_new - logp - 0.25 * np.einsum("ij,ij->i", diff, grad + grad_new)
    return np.where(np.isfinite(log_ratio), log_ratio, -np.inf)


def gap_noise(rng: np.random.Generator, fire: np.ndarray, d: int) -> np.ndarray:
    """Sub-step noise ``(K, B, d)`` for the Langevin chain, one Gaussian per gap between firings.

    With ``a_i = 1`` and equal ``s_i`` (:func:`pmm_pymc.core.langevin_chain`),
    :func:`pmm_pymc.core.pmm_step` uses the noise only through its partial sums
    ``S_i = sum_{j<i} noise[j]`` at the fired midpoints ``i`` and ``S_K`` at the end: a
    Gaussian random walk seen at those sub-steps. Drawing, for each gap ``[i, i')`` between
    consecutive fired sub-steps (``0`` and ``K`` included), one ``N(0, (i' - i) I)`` vector
    placed at sub-step ``i`` and zeros elsewhere gives those sums exactly their joint law, at
    ``1 + #fired`` Gaussian vectors per row instead of ``K``.

    Parameters
    ----------
    rng : numpy.random.Generator
    fire : numpy.ndarray of bool, shape (K, B)
        The fired midpoints (row 0 ignored).
    d : int
        Dimension of a row.
    """
    K, B = fire.shape
    starts = fire.copy()
    starts[0] = True
    gap = np.empty((K, B))
    following = np.full(B, K)  # the first start after sub-step j (or K)
    for j in range(K - 1, -1, -1):
        gap[j] = following - j
        following = np.where(starts[j], j, following)
    z = rng.standard_normal((int(starts.sum()), d))
    z *= np.sqrt(gap[starts])[:, None]
    noise = np.zeros((K, B, d))
    noise[starts] = z
    return noise


def draw(
    rng: np.random.Generator, K: int, B: int, d: int, *, adjust: bool, gap: bool | None = None
) -> LangevinDraws:
    """The random numbers of one transition of ``B`` rows of dimension ``d``.

    Parameters
    ----------
    rng : numpy.random.Generator
    K : int
        PMM sub-steps (1: LMC).
    B, d : int
        Rows and dimension.
    adjust : bool
        Also draw the warm-up adjustment's uniforms.
    gap : bool, optional
        Draw the noise per gap between firings (:func:`gap_noise`; same law, fewer
        Gaussians). Default: when ``K > 1`` and ``B * d >= GAP_NOISE_MIN_SIZE``.

    Returns
    -------
    LangevinDraws
    """
    fire = np.zeros((K, B), dtype=bool)
    if K > 1:
        fire[1:] = rng.random((K - 1, B)) < 1.0 / K
    if gap is None:
        gap = K > 1 and B * d >= GAP_NOISE_MIN_SIZE
    noise = gap_noise(rng, fire, d) if gap else rng.standard_normal((K, B, d))
    accept = rng.random(B) if adjust else None
    return LangevinDraws(fire, noise, accept)


def transition(
    logp_grad: LogpGrad,
    draws: LangevinDraws,
    state: LangevinState,
    params: LangevinParams,
) -> tuple[LangevinState, LangevinInfo]:
    """One PMM (or LMC) transition of every row of ``state``.

    Parameters
    ----------
    logp_grad : callable
        ``logp_grad(points) -> (logp, grad)`` at rows ``(n, d)``; non-finite values are
        allowed (they reject the move).
    draws : LangevinDraws
        From :func:`draw`.
    state : LangevinState
    params : LangevinParams

    Returns
    -------
    state : LangevinState
        The new rows (a row that did not move keeps its arrays' values).
    info : LangevinInfo
    """
    x, logp, grad = state
    eta, K, metric = params.step_size, params.K, params.metric
    B = x.shape[0]
    midpoint_finite = np.ones(B, dtype=bool)
    stiffness = np.zeros(B)
    spread = np.zeros(B)  # sum over fired midpoints of ||b_i - b_0||_M^2
    drift0 = metric.drift(grad)
    if np.ndim(eta) == 0:
        chain: AffineChain = _chain(float(eta), K)
    else:  # one step size per row: the core's per-member coefficients
        eta = np.asarray(eta, dtype=float)
        h = (eta / K)[:, None]
        chain = AffineChain(a=(1.0,) * K, g=(h,) * K, s=(np.sqrt(2.0 * h),) * K)

    def drift(points: np.ndarray, groups: tuple[tuple[int, np.ndarray], ...]) -> np.ndarray:
        lp, g = logp_grad(points)
        rows = groups[0][1] if len(groups) == 1 else np.concatenate([idx for _, idx in groups])
        finite = np.isfinite(lp) & np.isfinite(g).all(axis=1)
        midpoint_finite[rows[~finite]] = False
        b = metric.drift(g)
        # Secant estimate of the local Lipschitz constant of the preconditioned drift between
        # each row's start and its fired midpoints: ||M^{1/2} db|| / ||M^{1/2} dx||.
        with np.errstate(all="ignore"):
            num = metric.norm_sq(b - drift0[rows])
            den = metric.norm_sq(points - x[rows])
            ratio = np.where(finite & (den > 0), np.sqrt(num / den), 0.0)
        np.maximum.at(stiffness, rows, np.nan_to_num(ratio, nan=0.0, posinf=np.inf))
        np.add.at(spread, rows, np.where(finite, num, 0.0))
        return b

    noise = metric.scale_noise(draws.noise)
    fired = fired_from_mask(draws.fire) if K > 1 else [None]
    with np.errstate(over="ignore", invalid="ignore"):
        x_new, pinfo = pmm_step(drift, x, drift0, noise, fired, chain)
    n_midpoints = draws.fire.sum(axis=0)
    fallback = midpoint_finite & (eta * stiffness > _stability_limit(K))
    if fallback.any():
        # Outside PMM's stability region: the frozen-drift endpoint is exactly the LMC step
        # of size eta with the same noise (stable up to eta L < 2).
        x_new = np.where(fallback[:, None], pinfo.endpoint, x_new)

    logp_new = np.full(B, -np.inf)
    grad_new = np.full_like(grad, np.nan)
    if midpoint_finite.all():
        logp_new, grad_new = logp_grad(x_new)
    elif midpoint_finite.any():
        logp_new[midpoint_finite], grad_new[midpoint_finite] = logp_grad(x_new[midpoint_finite])
    proposal_finite = midpoint_finite & np.isfinite(logp_new) & np.isfinite(grad_new).all(axis=1)
    energy_error = np.where(
        proposal_finite,
        -log_accept_ratio(logp, logp_new, x, x_new, grad, grad_new, eta, metric),
        np.inf,
    )
    if K == 1:
        fine_energy_error = energy_error
    else:
        fine_energy_error = np.where(
            proposal_finite,
            -log_accept_ratio(logp, logp_new, x, x_new, grad, grad_new, eta / K, metric),
            np.inf,
        )
    ok = proposal_finite & (energy_error <= params.max_energy_error)
    with np.errstate(over="ignore"):
        accept_prob = np.where(ok, np.exp(-np.maximum(energy_error, 0.0)), 0.0)
    moved = ok
    if params.adjust:
        if draws.accept is None:
            raise ValueError("an adjusted transition needs draws.accept (draw(..., adjust=True))")
        moved = ok & ((energy_error <= 0) | (draws.accept < accept_prob))
    if moved.all():  # the usual case after warm-up: no copies
        new_state = LangevinState(x_new, np.asarray(logp_new), np.asarray(grad_new))
    else:
        new_state = LangevinState(
            np.where(moved[:, None], x_new, x),
            np.where(moved, logp_new, logp),
            np.where(moved[:, None], grad_new, grad),
        )
    info = LangevinInfo(
        accept_prob=accept_prob,
        energy_error=energy_error,
        diverging=~ok,
        moved=moved,
        midpoint_finite=midpoint_finite,
        proposal_finite=proposal_finite,
        n_midpoints=n_midpoints,
        n_steps=n_midpoints + midpoint_finite,
        stiffness=stiffness,
        fallback=fallback,
        fine_energy_error=fine_energy_error,
        midpoint_variance=(K - 1) / K * np.asarray(eta) ** 2 * spread,
    )
    return new_state, info
