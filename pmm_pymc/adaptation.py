"""Step-size adaptation for unadjusted Langevin steps.

An unadjusted sampler accepts every move, so it has no acceptance rate to
tune towards. What it does have, at no extra gradient cost, is the log density
and its gradient at both ends of every move. From those this module computes
the Metropolis-adjusted Langevin (MALA) acceptance probability the move
``x -> x'`` *would* have had as a Langevin proposal of size ``eta`` with
inverse mass ``M^{-1}``:

.. math::

    \\alpha = \\min\\Big(1, \\frac{\\pi(x')\\, q(x \\mid x')}{\\pi(x)\\, q(x' \\mid x)}\\Big),
    \\qquad q(y \\mid x) = N\\big(y;\\, x + \\eta M^{-1}\\nabla\\log\\pi(x),\\, 2\\eta M^{-1}\\big).

The statistic is computed and never applied: the chain stays unadjusted. Its
average is fed to PyMC's dual averaging
(:class:`pymc.step_methods.step_sizes.DualAverageAdaptation`) exactly as NUTS
feeds its mean tree acceptance. ``1 - alpha`` measures how badly the move
violates detailed balance, which is the local discretization error the step
size controls; a move that leaves the typical set (the start of an
instability) scores near 0 and shrinks the step. See ``docs/method.md`` for the
choice of targets and its caveat.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_TARGET_ACCEPT",
    "initial_step_size",
    "pmm_stability_limit",
    "langevin_log_accept_ratio",
]

DEFAULT_TARGET_ACCEPT: dict[str, float] = {"lmc": 0.9, "pmm": 0.9}
"""Default dual-averaging targets of the would-be MALA acceptance, per step method."""


def initial_step_size(n_dim: int) -> float:
    """A starting step size ``eta`` for a ``n_dim``-dimensional target.

    MALA's optimal step scales as ``n_dim^{-1/3}`` for product targets with unit
    scale (Roberts & Rosenthal, 1998); dual averaging takes it from there.

    Parameters
    ----------
    n_dim : int
        Number of (raveled) continuous dimensions.

    Returns
    -------
    float
    """
    return 0.25 * float(max(n_dim, 1)) ** (-1.0 / 3.0)


def langevin_log_accept_ratio(
    logp: float,
    logp_new: float,
    x: np.ndarray,
    x_new: np.ndarray,
    grad: np.ndarray,
    grad_new: np.ndarray,
    step_size: float,
    inv_mass: np.ndarray | None = None,
) -> float:
    """Log MALA acceptance ratio of the move ``x -> x_new``, computed and not applied.

    MALA is HMC with one leapfrog step of size ``sqrt(2 eta)``, and this ratio is minus
    that step's energy error; the acceptance probability is ``min(1, exp(ratio))``.
    With ``b = M^{-1} g`` and ``delta = x' - x`` the two Gaussian proposal densities
    combine into one inner product (``||v||_M^2 = v^T M v``)::

        ||x - x' - eta b'||_M^2 - ||x' - x - eta b||_M^2 = eta (2 delta + eta (b' - b))^T (g + g')

    so no division by ``M^{-1}`` is needed.

    Parameters
    ----------
    logp, logp_new : float
        ``log pi`` at ``x`` and at ``x_new``.
    x, x_new : numpy.ndarray, shape (d,)
        The start and the end of the move.
    grad, grad_new : numpy.ndarray, shape (d,)
        ``grad log pi`` at ``x`` and at ``x_new`` (not preconditioned).
    step_size : float
        ``eta``, with the convention ``x' = x + eta b(x) + sqrt(2 eta) M^{-1/2} xi``.
    inv_mass : numpy.ndarray, shape (d,), optional
        The diagonal of ``M^{-1}``; identity when omitted.

    Returns
    -------
    float
        ``log pi(x') + log q(x | x') - log pi(x) - log q(x' | x)``; ``-inf`` when
        it is not finite (an overflowing move counts as a certain rejection).
    """
    diff = grad_new - grad
    if inv_mass is not None:
        diff = inv_mass * diff
    diff *= step_size
    diff += 2.0 * (x_new - x)
    log_ratio = logp_new - logp - 0.25 * float(np.dot(diff, grad + grad_new))
    if not np.isfinite(log_ratio):
        return -np.inf
    return float(log_ratio)


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
