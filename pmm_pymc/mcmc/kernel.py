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

The randomized midpoint method (Shen & Lee 2019) is the same transition with other random
numbers (:func:`draw_randomized_midpoint`): exactly one fired sub-step per row, uniform over
``0..K-1``. Its correction weight is ``K g_i = eta``, so the move is
``x' = x + eta b(x_tau) + sqrt(2 eta) z`` with ``x_tau`` the frozen-drift point at the
uniformly placed time ``tau = i eta / K`` on the same Brownian path, at two gradients a step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from pmm_pymc.core import (
    AffineChain,
    correction_weights,
    fired_from_mask,
    kinetic_langevin_chain,
    kinetic_step,
    langevin_chain,
    pmm_step,
)

__all__ = [
    "LangevinDraws",
    "LangevinInfo",
    "LangevinParams",
    "LangevinState",
    "Metric",
    "OBABO_STABILITY_LIMIT",
    "combine_info",
    "draw",
    "draw_randomized_midpoint",
    "finite_rows",
    "gap_noise",
    "kinetic_log_accept_ratio",
    "kinetic_stability_limit",
    "log_accept_ratio",
    "pmm_stability_limit",
    "refresh_velocity",
    "secant_curvature",
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
        The positions.
    logp : numpy.ndarray, shape (B,)
    grad : numpy.ndarray, shape (B, d)
        ``grad log pi(x)``, not preconditioned.
    v : numpy.ndarray, shape (B, d), or None
        The velocities of kinetic Langevin (``None`` for overdamped Langevin); at
        stationarity ``v ~ N(0, M^{-1})`` (:func:`refresh_velocity`).
    """

    x: np.ndarray
    logp: np.ndarray
    grad: np.ndarray
    v: np.ndarray | None = None


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

    def whiten(self, v: np.ndarray) -> np.ndarray:
        """``M^{1/2} v`` along the last axis (so that ``||whiten(v)||^2 = v^T M v``)."""
        if self.inv_mass is None:
            return v
        if self.inv_mass.ndim == 1:
            return v / self.sqrt
        return v @ self.inv_sqrt.T

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
        for kinetic Langevin the block's time (:func:`pmm_pymc.core.kinetic_step`). One for
        all rows, or one per row.
    K : int
        PMM sub-steps (1: LMC, or kinetic LMC).
    metric : Metric
    max_energy_error : float
        A larger energy error rejects the move as a divergence.
    adjust : bool
        Metropolis-adjust the move with its would-be acceptance (warm-up only).
    friction : float or numpy.ndarray of shape (B,), or None
        ``None``: overdamped Langevin. A value ``gamma > 0``: kinetic (underdamped)
        Langevin with that friction, the state carrying velocities.
    """

    step_size: float | np.ndarray
    K: int
    metric: Metric
    max_energy_error: float = 1000.0
    adjust: bool = False
    friction: float | np.ndarray | None = None


class LangevinDraws(NamedTuple):
    """The random numbers of one transition (see the module docstring for their order).

    Attributes
    ----------
    fire : numpy.ndarray of bool, shape (K, B)
        ``fire[i, m]``: row ``m``'s midpoint ``i`` fires (row 0 is always False).
    noise : numpy.ndarray, shape (K, B, d), or (K, B, 1, d) for kinetic Langevin
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


def _kinetic_second_moment_radius(time: float, friction_time: float, K: int) -> float:
    """Spectral radius of ``E[A (x) A]`` for kinetic PMM on ``N(0, 1)`` (block time ``time``)."""
    a, g, _ = kinetic_step(time / K, friction_time / time)
    e1 = np.array([[1.0, 0.0]])
    power = [np.eye(2)]
    for _ in range(K):
        power.append(a @ power[-1])
    rollout = [np.eye(2)]  # P_i: the frozen rollout's map of the start, x̂_i = P_i x + noise
    for _ in range(K):
        rollout.append(a @ rollout[-1] - g @ e1)
    # A = P_K - K sum_i H_i M_i, H_i ~ Bernoulli(1/K) independent (i >= 1)
    terms = [power[K - 1 - i] @ g @ e1 @ (rollout[i] - np.eye(2)) for i in range(1, K)]
    p = 1.0 / K
    mean = rollout[K] - K * p * sum(terms, np.zeros((2, 2)))
    second = np.kron(mean, mean) + K * K * p * (1 - p) * sum(
        (np.kron(m, m) for m in terms), np.zeros((4, 4))
    )
    return float(np.max(np.abs(np.linalg.eigvals(second))))


def kinetic_stability_limit(K: int, friction_time: float) -> float:
    """The largest ``eta sqrt(L)`` at which kinetic PMM(eta, K) is mean-square stable on a Gaussian.

    On the drift ``b(u) = -L u`` one block is ``(u, v)' = A (u, v) + noise`` with ``A``
    depending on the independent firings ``H_i ~ Bernoulli(1/K)``: with ``P_i`` the frozen
    rollout's map and ``W_i`` the correction weight, ``A = P_K - K sum_i H_i W_i e1 (P_i - I)``,
    so ``E[A (x) A] = E[A] (x) E[A] + K^2 sum_i p (1 - p) M_i (x) M_i`` exactly. The second
    moment contracts iff its spectral radius is below 1; this returns the first ``eta sqrt(L)``
    where it is not, at a fixed ``gamma eta`` (time is measured in units of ``1/sqrt(L)``, so
    the limit depends on ``K`` and ``gamma eta`` only). ``K = 1`` is OBABO, stable up to 2
    (the leapfrog's limit) at any friction; PMM's limit is lower at small ``gamma eta``
    (0.92 for ``K = 4`` at ``gamma eta = 0.05``) and higher at large (1.9 at ``gamma eta = 1``).

    Parameters
    ----------
    K : int
    friction_time : float
        ``gamma eta``.

    Returns
    -------
    float
    """
    grid = np.arange(0.25, 6.01, 0.25)  # scanned for the first unstable value, then bisected
    hi = next((t for t in grid if _kinetic_second_moment_radius(t, friction_time, K) >= 1.0), None)
    if hi is None:
        return float(grid[-1])
    lo = hi - 0.25
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if _kinetic_second_moment_radius(mid, friction_time, K) < 1.0:
            lo = mid
        else:
            hi = mid
    return lo


_FRICTION_TIMES = np.geomspace(1e-2, 1e2, 13)


@functools.lru_cache(maxsize=16)
def _kinetic_limits(K: int) -> np.ndarray:
    """:func:`kinetic_stability_limit` on the grid ``_FRICTION_TIMES``, for interpolation."""
    return np.array([kinetic_stability_limit(K, ft) for ft in _FRICTION_TIMES])


def _kinetic_limit(K: int, friction_time: float | np.ndarray) -> float | np.ndarray:
    """:func:`kinetic_stability_limit`, interpolated in ``log(gamma eta)``."""
    return np.interp(np.log(friction_time), np.log(_FRICTION_TIMES), _kinetic_limits(K))


OBABO_STABILITY_LIMIT = 2.0
"""OBABO (kinetic LMC, and kinetic PMM's fallback) is stable for ``eta sqrt(L)`` below this."""

_stability_limit = functools.lru_cache(maxsize=64)(pmm_stability_limit)
_chain = functools.lru_cache(maxsize=64)(langevin_chain)


@functools.lru_cache(maxsize=64)
def _kinetic_chain(eta: float, friction: float, K: int) -> tuple[AffineChain, tuple]:
    """:func:`kinetic_langevin_chain` with its correction weights, for scalar settings."""
    chain = kinetic_langevin_chain(eta, friction, K)
    return chain, correction_weights(chain)


def refresh_velocity(rng: np.random.Generator, metric: Metric, B: int, d: int) -> np.ndarray:
    """Fresh velocities ``v ~ N(0, M^{-1})``, shape ``(B, d)``: their stationary law."""
    return metric.scale_noise(rng.standard_normal((B, d)))


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


def kinetic_log_accept_ratio(
    logp: np.ndarray,
    logp_new: np.ndarray,
    x: np.ndarray,
    x_new: np.ndarray,
    grad: np.ndarray,
    grad_new: np.ndarray,
    step_size: float | np.ndarray,
    metric: Metric,
) -> np.ndarray:
    """Log would-be acceptance of kinetic moves ``u -> u'``: minus a leapfrog step's energy error.

    The kinetic analogue of :func:`log_accept_ratio`. One OBABO step of time ``eta``
    (:func:`pmm_pymc.core.kinetic_step`) is an exact velocity refresh around one leapfrog
    step, so Metropolis-adjusting it (generalised HMC) accepts with
    ``min(1, exp(-energy error))`` of that leapfrog step. The leapfrog step from ``u`` to
    ``u'`` has the half-step velocity ``w = (u' - u)/eta`` and the velocities
    ``w - (eta/2) b`` before and ``w + (eta/2) b'`` after, so with ``b = M^{-1} g`` the
    ratio is::

        log pi(u') - log pi(u) - (eta/2) w^T (g + g') - (eta^2/8) (b'^T g' - b^T g)

    and needs only the end points and their gradients. It is :func:`log_accept_ratio` at
    the step ``eta^2 / 2`` (MALA of step ``eta_m`` is the leapfrog of step ``sqrt(2 eta_m)``,
    with ``b'^T g = b^T g'`` for a symmetric ``M^{-1}``). A PMM block is scored as the one
    coarse step it replaces.

    Parameters
    ----------
    logp, logp_new : numpy.ndarray, shape (B,)
    x, x_new, grad, grad_new : numpy.ndarray, shape (B, d)
        Start and end positions and ``grad log pi`` there.
    step_size : float or numpy.ndarray of shape (B,)
        ``eta``.
    metric : Metric

    Returns
    -------
    numpy.ndarray, shape (B,)
        ``-inf`` where not finite.
    """
    # The leapfrog step of size eta is MALA's of size sqrt(2 eta_mala): the same ratio.
    eta = np.asarray(step_size, dtype=float)
    return log_accept_ratio(logp, logp_new, x, x_new, grad, grad_new, 0.5 * eta**2, metric)


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
    rng: np.random.Generator,
    K: int,
    B: int,
    d: int,
    *,
    adjust: bool,
    gap: bool | None = None,
    kinetic: bool = False,
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
        Gaussians). Default: when ``K > 1`` and ``B * d >= GAP_NOISE_MIN_SIZE`` (never for
        kinetic Langevin, whose sub-steps do not add up as a random walk).
    kinetic : bool, default False
        Noise for kinetic Langevin: shape ``(K, B, 1, d)`` (one velocity refresh per
        sub-step, :func:`pmm_pymc.core.kinetic_step`).

    Returns
    -------
    LangevinDraws
    """
    if kinetic and gap:
        raise ValueError("gap noise is for overdamped Langevin; kinetic noise is per sub-step")
    fire = np.zeros((K, B), dtype=bool)
    if K > 1:
        fire[1:] = rng.random((K - 1, B)) < 1.0 / K
    if kinetic:
        noise = rng.standard_normal((K, B, 1, d))
    else:
        if gap is None:
            gap = K > 1 and B * d >= GAP_NOISE_MIN_SIZE
        noise = gap_noise(rng, fire, d) if gap else rng.standard_normal((K, B, d))
    accept = rng.random(B) if adjust else None
    return LangevinDraws(fire, noise, accept)


def _block(
    params: LangevinParams, state: LangevinState, drift0: np.ndarray
) -> tuple[AffineChain, tuple | None, np.ndarray, np.ndarray]:
    """The block's coefficients, correction weights, start and start drift in the core's shapes.

    Overdamped: the state is the positions ``(B, d)``. Kinetic: positions and velocities
    stacked ``(B, 2, d)`` and the drift ``(B, 1, d)``
    (:func:`pmm_pymc.core.kinetic_langevin_chain`).
    """
    eta, K, gamma = params.step_size, params.K, params.friction
    if gamma is None:
        if np.ndim(eta) == 0:
            return _chain(float(eta), K), None, state.x, drift0
        # one step size per row: the core's per-member coefficients
        h = (np.asarray(eta, dtype=float) / K)[:, None]
        chain = AffineChain(a=(1.0,) * K, g=(h,) * K, s=(np.sqrt(2.0 * h),) * K)
        return chain, None, state.x, drift0
    if state.v is None:
        raise ValueError("kinetic Langevin (params.friction set) needs velocities in state.v")
    if np.ndim(eta) == 0 and np.ndim(gamma) == 0:
        chain, weights = _kinetic_chain(float(eta), float(gamma), K)
    else:
        chain = kinetic_langevin_chain(eta, gamma, K)
        weights = correction_weights(chain)
    return chain, weights, np.stack([state.x, state.v], axis=1), drift0[:, None, :]


def secant_curvature(
    metric: Metric, drift_change: np.ndarray, move: np.ndarray, finite: np.ndarray
) -> np.ndarray:
    """Secant estimate of the preconditioned drift's Lipschitz constant, per row.

    ``||M^{1/2} db|| / ||M^{1/2} dx||``, 0 where ``finite`` is False, not finite or the
    move is zero.

    Parameters
    ----------
    metric : Metric
    drift_change : numpy.ndarray, shape (B, d)
        ``db``, the change of the preconditioned drift ``M^{-1} grad``.
    move : numpy.ndarray, shape (B, d)
        ``dx``.
    finite : numpy.ndarray of bool, shape (B,)
        Rows to measure.

    Returns
    -------
    numpy.ndarray, shape (B,)
    """
    with np.errstate(all="ignore"):
        return _secant_from_norms(metric.norm_sq(drift_change), metric.norm_sq(move), finite)


def _secant_from_norms(num: np.ndarray, den: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """:func:`secant_curvature` from the squared norms ``||db||_M^2`` and ``||dx||_M^2``."""
    with np.errstate(all="ignore"):
        ratio = np.where(finite & (den > 0), np.sqrt(num / den), 0.0)
    return np.nan_to_num(ratio, nan=0.0, posinf=np.inf)


def finite_rows(logp: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Rows whose log density ``(n,)`` and gradient ``(n, d)`` are all finite, shape ``(n,)``."""
    return np.isfinite(logp) & np.isfinite(grad).all(axis=1)


def _rows(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``mask`` of shape ``(B,)`` broadcasting against ``like`` of shape ``(B, ...)``."""
    return mask.reshape((mask.shape[0],) + (1,) * (like.ndim - 1))


def _evaluate(
    logp_grad: LogpGrad, points: np.ndarray, rows: np.ndarray, like: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``logp_grad`` at the ``rows`` of ``points``; ``-inf`` and NaN elsewhere."""
    if rows.all():
        return logp_grad(points)
    logp = np.full(points.shape[0], -np.inf)
    grad = np.full_like(like, np.nan)
    if rows.any():
        logp[rows], grad[rows] = logp_grad(points[rows])
    return logp, grad


def draw_randomized_midpoint(
    rng: np.random.Generator, K: int, B: int, d: int, *, adjust: bool
) -> LangevinDraws:
    """The random numbers of one randomized-midpoint transition of ``B`` rows.

    The randomized midpoint method (Shen & Lee 2019, overdamped form) evaluates the drift
    once per step, at ``x_tau = x + tau b(x) + sqrt(2) W_tau`` with ``tau`` uniform on
    ``[0, eta)``, and moves to ``x' = x + eta b(x_tau) + sqrt(2) W_eta`` on the same
    Brownian path ``W``. :func:`transition` runs it when each row fires exactly one
    sub-step ``i``, uniform over ``0..K-1`` (``tau = i eta / K``, a grid of ``K`` times):
    the correction weight of sub-step ``i`` is ``K g_i = eta``, so the PMM endpoint
    ``x + eta b(x) + sqrt(2 eta) z + eta (b(x_tau) - b(x))`` is the method's move
    exactly. ``i = 0`` is ``tau = 0``, where ``b(x_tau) = b(x)`` is known: no drift call,
    and the move is the LMC step. A row costs ``2 - 1/K`` gradients on average.

    Parameters
    ----------
    rng : numpy.random.Generator
    K : int
        Grid of midpoint times (>= 2; large, e.g. 64, for a near-uniform ``tau``).
    B, d : int
        Rows and dimension.
    adjust : bool
        Also draw the warm-up adjustment's uniforms.

    Returns
    -------
    LangevinDraws
        The noise per gap between firings (:func:`gap_noise`): two Gaussians per row
        whatever ``K``.
    """
    if int(K) != K or K < 2:
        raise ValueError(f"the randomized midpoint needs K >= 2 sub-steps, got {K!r}")
    K = int(K)
    fire = np.zeros((K, B), dtype=bool)
    fire[rng.integers(0, K, size=B), np.arange(B)] = True
    fire[0] = False  # tau = 0: the drift at the start is already known
    noise = gap_noise(rng, fire, d)
    accept = rng.random(B) if adjust else None
    return LangevinDraws(fire, noise, accept)


def transition(
    logp_grad: LogpGrad,
    draws: LangevinDraws,
    state: LangevinState,
    params: LangevinParams,
) -> tuple[LangevinState, LangevinInfo]:
    """One PMM (or LMC) transition of every row of ``state``, overdamped or kinetic.

    Parameters
    ----------
    logp_grad : callable
        ``logp_grad(points) -> (logp, grad)`` at rows ``(n, d)``; non-finite values are
        allowed (they reject the move).
    draws : LangevinDraws
        From :func:`draw` (with ``kinetic=True`` when ``params.friction`` is set).
    state : LangevinState
        With velocities ``state.v`` when ``params.friction`` is set.
    params : LangevinParams

    Returns
    -------
    state : LangevinState
        The new rows (a row that did not move keeps its arrays' values; a kinetic row that
        did not move has its velocity reversed, as in generalised HMC).
    info : LangevinInfo
    """
    x, logp, grad = state.x, state.logp, state.grad
    eta, K, metric = params.step_size, params.K, params.metric
    kinetic = params.friction is not None
    B = x.shape[0]
    midpoint_finite = np.ones(B, dtype=bool)
    stiffness = np.zeros(B)
    spread = np.zeros(B)  # sum over fired midpoints of ||b_i - b_0||_M^2
    drift0 = metric.drift(grad)
    chain, weights, start, b0 = _block(params, state, drift0)

    def drift(points: np.ndarray, groups: tuple[tuple[int, np.ndarray], ...]) -> np.ndarray:
        positions = points[:, 0] if kinetic else points
        lp, g = logp_grad(positions)
        rows = groups[0][1] if len(groups) == 1 else np.concatenate([idx for _, idx in groups])
        finite = finite_rows(lp, g)
        midpoint_finite[rows[~finite]] = False
        b = metric.drift(g)
        with np.errstate(all="ignore"):
            change = metric.norm_sq(b - drift0[rows])  # ||b_i - b_0||_M^2, for both below
            ratio = _secant_from_norms(change, metric.norm_sq(positions - x[rows]), finite)
        np.maximum.at(stiffness, rows, ratio)
        np.add.at(spread, rows, np.where(finite, change, 0.0))
        return b[:, None, :] if kinetic else b

    noise = metric.scale_noise(draws.noise)
    fired = fired_from_mask(draws.fire) if K > 1 else [None]
    with np.errstate(over="ignore", invalid="ignore"):
        end, pinfo = pmm_step(drift, start, b0, noise, fired, chain, weights)
    n_midpoints = draws.fire.sum(axis=0)
    n_steps = n_midpoints + midpoint_finite

    def outside(rows: np.ndarray) -> np.ndarray:
        """Rows outside PMM's mean-square stability region, by their secant stiffness."""
        if K == 1:
            return np.zeros(B, dtype=bool)
        if kinetic:
            limit = _kinetic_limit(K, np.asarray(eta) * params.friction)
            return rows & (eta * np.sqrt(stiffness) > limit)
        return rows & (eta * stiffness > _stability_limit(K))

    def coarse_step() -> np.ndarray:
        """One OBABO step of time eta, its noise the sub-steps' noise combined."""
        coarse = kinetic_langevin_chain(eta, params.friction, 1)
        combined = noise.sum(axis=0, keepdims=True) / np.sqrt(K)
        return pmm_step(drift, start, b0, combined, [None], coarse)[0]

    # Outside PMM's stability region the block is replaced by a step that is stable there.
    # Overdamped: the frozen-drift endpoint, exactly the LMC step of size eta with the same
    # noise (stable up to eta L < 2). Kinetic: one OBABO step of time eta (stable up to
    # eta sqrt(L) < 2); the frozen-drift endpoint is not stable there.
    fallback = outside(midpoint_finite)
    if fallback.any():
        endpoint = coarse_step() if kinetic else pinfo.endpoint
        end = np.where(_rows(fallback, end), endpoint, end)
    x_new = end[:, 0] if kinetic else end
    logp_new, grad_new = _evaluate(logp_grad, x_new, midpoint_finite, grad)
    proposal_finite = midpoint_finite & finite_rows(logp_new, grad_new)
    if kinetic and K > 1:
        # A row where nothing fired has not seen the curvature yet; kinetic PMM's frozen-drift
        # block is unstable outside the region, so the secant to the proposal is checked too,
        # and a row outside takes the OBABO step instead (one more gradient evaluation).
        seen = secant_curvature(metric, metric.drift(grad_new) - drift0, x_new - x, proposal_finite)
        np.maximum(stiffness, seen, out=stiffness)
        late = outside(proposal_finite & ~fallback)
        if late.any():
            end = np.where(_rows(late, end), coarse_step(), end)
            x_new = end[:, 0]
            lp_late, g_late = _evaluate(logp_grad, x_new, late, grad)
            logp_new = np.where(late, lp_late, logp_new)
            grad_new = np.where(late[:, None], g_late, grad_new)
            proposal_finite = np.where(late, finite_rows(logp_new, grad_new), proposal_finite)
            n_steps = n_steps + late
            fallback = fallback | late
    accept_ratio = kinetic_log_accept_ratio if kinetic else log_accept_ratio
    energy_error = np.where(
        proposal_finite,
        -accept_ratio(logp, logp_new, x, x_new, grad, grad_new, eta, metric),
        np.inf,
    )
    if K == 1:
        fine_energy_error = energy_error
    else:
        fine_energy_error = np.where(
            proposal_finite,
            -accept_ratio(logp, logp_new, x, x_new, grad, grad_new, np.asarray(eta) / K, metric),
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
    v_new = end[:, 1] if kinetic else None
    if moved.all():  # the usual case after warm-up: no copies
        new_state = LangevinState(x_new, np.asarray(logp_new), np.asarray(grad_new), v_new)
    else:
        new_state = LangevinState(
            np.where(moved[:, None], x_new, x),
            np.where(moved, logp_new, logp),
            np.where(moved[:, None], grad_new, grad),
            np.where(moved[:, None], v_new, -state.v) if kinetic else None,
        )
    info = LangevinInfo(
        accept_prob=accept_prob,
        energy_error=energy_error,
        diverging=~ok,
        moved=moved,
        midpoint_finite=midpoint_finite,
        proposal_finite=proposal_finite,
        n_midpoints=n_midpoints,
        n_steps=n_steps,
        stiffness=stiffness,
        fallback=fallback,
        fine_energy_error=fine_energy_error,
        midpoint_variance=(K - 1) / K * np.asarray(eta) ** 2 * spread,
    )
    return new_state, info


def combine_info(infos: Sequence[LangevinInfo]) -> LangevinInfo:
    """What consecutive transitions of the same rows did together, per row.

    For a draw made of several transitions (``blocks_per_draw`` of the samplers): the
    gradient counts (``n_midpoints``, ``n_steps``) add up; ``diverging``, ``moved`` and
    ``fallback`` hold if they held in any; ``stiffness`` is the largest. The per-move
    quantities (``accept_prob``, ``energy_error``, ``midpoint_finite``,
    ``proposal_finite``) are those of the first diverging transition where a row
    diverged (so a warning can say why), else those of the last one.

    Parameters
    ----------
    infos : sequence of LangevinInfo
        The infos of the transitions, in the order they ran (at least one).

    Returns
    -------
    LangevinInfo
    """
    if len(infos) == 1:
        return infos[0]
    diverging = np.stack([info.diverging for info in infos])  # (n, B)
    any_diverging = diverging.any(axis=0)
    reported = np.where(any_diverging, np.argmax(diverging, axis=0), len(infos) - 1)
    rows = np.arange(diverging.shape[1])

    def stacked(name: str) -> np.ndarray:
        return np.stack([getattr(info, name) for info in infos])

    def pick(name: str) -> np.ndarray:
        return stacked(name)[reported, rows]

    return LangevinInfo(
        accept_prob=pick("accept_prob"),
        energy_error=pick("energy_error"),
        diverging=any_diverging,
        moved=stacked("moved").any(axis=0),
        midpoint_finite=pick("midpoint_finite"),
        proposal_finite=pick("proposal_finite"),
        n_midpoints=stacked("n_midpoints").sum(axis=0),
        n_steps=stacked("n_steps").sum(axis=0),
        stiffness=stacked("stiffness").max(axis=0),
        fallback=stacked("fallback").any(axis=0),
        fine_energy_error=pick("fine_energy_error"),
        midpoint_variance=pick("midpoint_variance"),
    )
