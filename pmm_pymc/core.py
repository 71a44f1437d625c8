"""The Poisson Midpoint Method (PMM) update, written once for numpy and torch.

This module is the single implementation of the PMM step that every sampler in
the package calls: the PyMC step methods (:mod:`pmm_pymc.mcmc.steps`), the torch
Langevin sampler and the diffusion sampler. It imports nothing else from the
package and keeps no state: :func:`pmm_step` is a pure function of the current
point, its cached drift, the noise, the fired midpoints and the coefficients.

The fine chain
--------------
PMM approximates ``K`` sub-steps of an affine chain

.. math::

    x_{i+1} = a_i x_i + g_i\\, b(x_i, \\tau_i) + s_i z_i, \\qquad i = 0, \\dots, K-1,

by one block. The drift is frozen at ``b0 = b(x_0, tau_0)`` for the rollout
through the block (no drift calls), which gives the midpoints ``x̂_i`` and the
frozen-drift endpoint ``x̂_K``. Each midpoint ``i >= 1`` fires with probability
``1/K``; at each fired midpoint the drift ``b_i = b(x̂_i, tau_i)`` is evaluated
and the endpoint receives the correction

.. math::

    \\Big(\\prod_{r > i} a_r\\Big)\\, g_i\\, K\\, (b_i - b_0).

Langevin Monte Carlo with step size ``eta`` and diagonal preconditioner
``M^{-1}`` is ``a_i = 1``, ``g_i = eta/K``, ``s_i = sqrt(2 eta/K)`` with the
noise ``z_i = M^{-1/2} Z_i`` and drift ``b = M^{-1} grad logp``
(:func:`langevin_chain`). With ``K = 1`` nothing can fire and the block is one
Euler-Maruyama (LMC) step.

Matrix coefficients
-------------------
The coefficients may also be matrices acting on a *component* axis of the state
(:class:`MatrixCoefficient`): the state is ``(B, C, *event)``, ``a_i`` is ``C x C``,
``g_i`` is ``C x C_b`` for a drift of shape ``(B, C_b, *event)`` and ``s_i`` is
``C x C_z`` for noise of shape ``(B, C_z, *event)``. The products above become matrix
products over that axis, taken in order, and the correction weight of midpoint ``i``
is the matrix ``A_{K-1} ... A_{i+1} G_i K``. Kinetic (underdamped) Langevin on the
position ``u`` and velocity ``v`` is this form with ``C = 2``, ``C_b = C_z = 1``
(:func:`kinetic_langevin_chain`); its drift sees the whole midpoint ``(u, v)`` and
uses ``u``.

Conventions
-----------
* ``x`` has a leading batch axis: shape ``(B, *event)``. A single chain is
  ``B = 1``.
* ``noise[i]`` has the shape of ``x``; ``noise`` may be an array of shape
  ``(K, B, *event)`` or any object indexable by the sub-step (for drawing the
  noise lazily, one sub-step at a time).
* ``fired[i]`` is an integer index array (in the namespace and on the device of
  ``x``) of the batch members whose midpoint ``i`` fires, or ``None``.
  ``fired[0]`` must be ``None`` or empty: the midpoint ``i = 0`` is ``x``
  itself, where the drift is already known.
* The random numbers are drawn by the caller, so that the caller owns the
  generator (a :class:`numpy.random.Generator`, a :class:`torch.Generator`, or
  one per batch member) and this module stays deterministic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace, is_torch_array

__all__ = [
    "AffineChain",
    "KineticStep",
    "MatrixCoefficient",
    "PMMInfo",
    "correction_weights",
    "fired_from_mask",
    "kinetic_langevin_chain",
    "kinetic_step",
    "langevin_chain",
    "pmm_step",
]

Array = Any
Groups = tuple[tuple[int, Array], ...]
DriftFn = Callable[[Array, Groups], Array]


class MatrixCoefficient(NamedTuple):
    """A coefficient that acts on the component axis (axis 1) of what it multiplies.

    Applied to ``v`` of shape ``(B, C_in, *event)`` it gives
    ``y[m, r] = sum_c m[r, c] v[m, c]``, shape ``(B, C_out, *event)``.

    Attributes
    ----------
    m : array, shape (C_out, C_in) or (B, C_out, C_in)
        The matrix, one for all batch members or one per member (in the
        namespace and on the device of the state).
    """

    m: Array


def _apply(coef: Any, v: Array) -> Array:
    """``coef`` times ``v``: elementwise, or over the component axis for a matrix."""
    if not isinstance(coef, MatrixCoefficient):
        return coef * v
    m = coef.m
    flat = v.reshape(v.shape[0], v.shape[1], -1)
    out = m @ flat
    return out.reshape((v.shape[0], m.shape[-2], *v.shape[2:]))


def _compose(left: Any, right: Any) -> Any:
    """The coefficient of ``left`` applied after ``right``."""
    if isinstance(left, MatrixCoefficient) and isinstance(right, MatrixCoefficient):
        return MatrixCoefficient(left.m @ right.m)
    if isinstance(right, MatrixCoefficient):  # a scalar times a matrix
        return MatrixCoefficient(left * right.m)
    if isinstance(left, MatrixCoefficient):
        return MatrixCoefficient(left.m * right)
    return left * right


def _take(coef: Any, idx: Array, xp: Any) -> Any:
    """The members ``idx`` of a per-member coefficient (others pass through)."""
    if isinstance(coef, MatrixCoefficient):
        return MatrixCoefficient(xp.take(coef.m, idx, axis=0)) if coef.m.ndim == 3 else coef
    return xp.take(coef, idx, axis=0) if getattr(coef, "ndim", 0) else coef


class AffineChain(NamedTuple):
    """Coefficients of the ``K`` fine sub-steps of one block.

    The sub-step ``i`` maps ``x_i`` to ``a[i] * x_i + g[i] * b(x_i) + s[i] * z_i``.

    Attributes
    ----------
    a, g, s : tuple
        Per-sub-step multipliers of the state, the drift and the noise, each
        of length ``K``: floats, arrays broadcasting against the state (one
        coefficient per batch member), or :class:`MatrixCoefficient`.
    """

    a: tuple[float, ...]
    g: tuple[float, ...]
    s: tuple[float, ...]

    @property
    def K(self) -> int:  # noqa: N802 - the method's own name for it
        """Number of fine sub-steps in the block."""
        return len(self.a)


class PMMInfo(NamedTuple):
    """What one PMM block did.

    Attributes
    ----------
    n_evals : int
        Drift evaluations at fired midpoints in this block (summed over the
        batch). The drift at the start point is not counted: it is ``b0``.
    groups : tuple of (int, array)
        The fired midpoints, as ``(sub-step i, batch members)`` in the order
        their points were passed to the drift.
    endpoint : array
        The frozen-drift endpoint ``x̂_K`` before the corrections.
    """

    n_evals: int
    groups: Groups
    endpoint: Array


def langevin_chain(step_size: float, K: int = 1) -> AffineChain:
    """Coefficients of ``K`` Euler-Maruyama Langevin sub-steps of size ``step_size/K``.

    With target ``pi ∝ exp(logp)``, drift ``b = M^{-1} grad logp`` and noise
    ``z = M^{-1/2} Z``, one LMC step of size ``eta`` is
    ``x' = x + eta * b(x) + sqrt(2 eta) * z``.

    Parameters
    ----------
    step_size : float
        The block's step size ``eta`` (the sum of the sub-step sizes).
    K : int, default 1
        Number of sub-steps.

    Returns
    -------
    AffineChain
    """
    if not (np.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    if int(K) != K or K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K!r}")
    K = int(K)
    h = float(step_size) / K
    sd = float(np.sqrt(2.0 * h))
    return AffineChain(a=(1.0,) * K, g=(h,) * K, s=(sd,) * K)


class KineticStep(NamedTuple):
    """One frozen-drift sub-step of kinetic Langevin: the OBABO splitting, regrouped.

    Kinetic Langevin on position ``u`` and velocity ``v`` with preconditioner ``M``,
    ``du = v dt``, ``dv = b(u) dt - gamma v dt + sqrt(2 gamma) M^{-1/2} dW`` with
    ``b = M^{-1} grad logp``, discretised by OBABO (an exact Ornstein-Uhlenbeck half-step
    ``O``, a velocity half-kick ``B``, a position drift ``A``, ...). A run of OBABO steps,
    cut between the ``A`` and the next ``B``, is a run of ``B O B A`` sub-steps of time
    ``h`` whose two kicks use the gradient at the sub-step's start, so each sub-step is
    affine in the drift frozen there::

        v <- v + (h/2) b(u);  v <- e v + sqrt(1 - e^2) M^{-1/2} z;  v <- v + (h/2) b(u);
        u <- u + h v,         e = exp(-gamma h),

    that is ``(u', v') = a (u, v) + g b(u) + s z`` with::

        a = [[1, h e], [0, e]],   g = (1 + e)/2 [[h^2], [h]],   s = sqrt(1 - e^2) [[h], [1]].

    The velocity carried between sub-steps is the half-kicked one (after the first ``B``
    of a leapfrog step).

    Attributes
    ----------
    a : numpy.ndarray, shape (..., 2, 2)
    g : numpy.ndarray, shape (..., 2, 1)
    s : numpy.ndarray, shape (..., 2, 1)
        Multiplies one standard normal ``z`` per coordinate (``M^{-1/2}``-scaled).
    """

    a: np.ndarray
    g: np.ndarray
    s: np.ndarray


def kinetic_step(h: float | np.ndarray, friction: float | np.ndarray) -> KineticStep:
    """The coefficients of one ``B O B A`` kinetic Langevin sub-step (see :class:`KineticStep`).

    Parameters
    ----------
    h : float or numpy.ndarray
        The sub-step's time (> 0); an array gives one sub-step per entry.
    friction : float or numpy.ndarray
        ``gamma`` (> 0), broadcasting against ``h``.

    Returns
    -------
    KineticStep
    """
    h, gamma = np.broadcast_arrays(np.asarray(h, dtype=float), np.asarray(friction, dtype=float))
    e = np.exp(-gamma * h)
    a = np.zeros((*h.shape, 2, 2))
    a[..., 0, 0] = 1.0
    a[..., 0, 1] = h * e
    a[..., 1, 1] = e
    half = 0.5 * (1.0 + e)
    g = np.stack([half * h * h, half * h], axis=-1)[..., None]
    sd = np.sqrt(-np.expm1(-2.0 * gamma * h))
    s = np.stack([sd * h, sd], axis=-1)[..., None]
    return KineticStep(a, g, s)


def kinetic_langevin_chain(
    step_size: float | np.ndarray, friction: float | np.ndarray, K: int = 1
) -> AffineChain:
    """Coefficients of ``K`` kinetic Langevin sub-steps of time ``step_size/K``.

    The state is ``(B, 2, *event)`` (position ``u`` and velocity ``v``), the drift
    ``b = M^{-1} grad logp(u)`` of shape ``(B, 1, *event)``, and the noise of sub-step
    ``i`` is ``M^{-1/2} Z_i`` with ``Z_i`` standard normal of shape ``(B, 1, *event)``;
    each sub-step is :func:`kinetic_step`. With ``K = 1`` the block is one OBABO step
    (kinetic LMC), whose gradient at the end is the next block's start.

    Parameters
    ----------
    step_size : float or numpy.ndarray of shape (B,)
        The block's time ``eta`` (> 0); per batch member when an array.
    friction : float or numpy.ndarray of shape (B,)
        ``gamma`` (> 0).
    K : int, default 1
        Number of sub-steps.

    Returns
    -------
    AffineChain
        With :class:`MatrixCoefficient` entries (per member when either input is an array).
    """
    if not (np.all(np.isfinite(step_size)) and np.all(np.asarray(step_size) > 0)):
        raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    if not (np.all(np.isfinite(friction)) and np.all(np.asarray(friction) > 0)):
        raise ValueError(f"friction must be finite and > 0, got {friction!r}")
    if int(K) != K or K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K!r}")
    K = int(K)
    sub = kinetic_step(np.asarray(step_size, dtype=float) / K, friction)
    a, g, s = (MatrixCoefficient(c) for c in sub)
    return AffineChain(a=(a,) * K, g=(g,) * K, s=(s,) * K)


def correction_weights(chain: AffineChain) -> tuple[Any, ...]:
    """The weight ``(prod_{r>i} a_r) * g_i * K`` of each midpoint's correction.

    With matrix coefficients the product is ``A_{K-1} ... A_{i+1} G_i K``.

    Parameters
    ----------
    chain : AffineChain

    Returns
    -------
    tuple
        One weight per sub-step ``i = 0..K-1`` (floats for float coefficients).
    """
    K = chain.K
    weights: list[Any] = [0.0] * K
    tail: Any = 1.0  # prod_{r > i} a_r
    for i in range(K - 1, -1, -1):
        weights[i] = _compose(_compose(tail, chain.g[i]), K)
        tail = _compose(tail, chain.a[i])
    return tuple(weights)


_correction_weights_lru = functools.lru_cache(maxsize=256)(correction_weights)


def _cached_correction_weights(chain: AffineChain) -> tuple[float, ...]:
    """:func:`correction_weights`, memoised: samplers reuse one chain for many blocks."""
    try:
        return _correction_weights_lru(chain)
    except TypeError:  # coefficients given as unhashable sequences
        return correction_weights(chain)


def fired_from_mask(mask: np.ndarray, like: Array | None = None) -> list[Array | None]:
    """Turn a host boolean mask ``(K, B)`` of fired midpoints into index arrays.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (K, B)
        ``mask[i, m]`` is True when member ``m``'s midpoint ``i`` fires.
        Row 0 is ignored (the midpoint ``i = 0`` never costs a call).
    like : array, optional
        An array whose namespace and device the index arrays take (a torch
        tensor on the GPU, say). Default: numpy.

    Returns
    -------
    list of (array or None)
        ``K`` entries, ``None`` where nothing fires.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (K, B), got shape {mask.shape}")
    out: list[Array | None] = [None]
    for i in range(1, mask.shape[0]):
        idx = np.flatnonzero(mask[i])
        if idx.size == 0:
            out.append(None)
        elif like is not None and is_torch_array(like):
            import torch

            out.append(torch.as_tensor(idx, device=like.device))
        else:
            out.append(idx)
    return out


def _index_add(xp: Any, target: Array, index: Array, values: Array) -> Array:
    """``target`` with ``values`` added at rows ``index`` (repeated rows accumulate)."""
    if is_torch_array(target):
        # The same sum as ``index_add``; on the CPU ``index_put(accumulate=True)`` is several
        # times faster for the few rows PMM corrects, and insensitive to thread contention
        # (benchmarks/bench_speed_diffusion.py, docs/performance.md).
        return target.index_put((index,), values, accumulate=True)
    out = xp.asarray(target, copy=True)
    np.add.at(out, index, values)
    return out


def pmm_step(
    drift: DriftFn,
    x: Array,
    b0: Array,
    noise: Array | Sequence[Array],
    fired: Sequence[Array | None],
    chain: AffineChain,
    weights: Sequence[float | Array] | None = None,
) -> tuple[Array, PMMInfo]:
    """One PMM block: ``K`` frozen-drift sub-steps plus the midpoint corrections.

    Parameters
    ----------
    drift : callable
        ``drift(points, groups) -> array`` of the shape of ``points``.
        ``points`` stacks the fired midpoints, shape ``(n, *event)``;
        ``groups`` lists ``(i, members)`` in stacking order, so the caller can
        give each point its own time ``tau_i`` (diffusion) or batch member.
        Called at most once per block, and not at all when nothing fires.
    x : array, shape (B, *event)
        The current states.
    b0 : array, shape (B, *event)
        The drift at ``x`` at the block's first time (shape ``(B, C_b, *event)``
        with matrix coefficients).
    noise : array or indexable
        ``noise[i]``, shape ``(B, *event)`` (``(B, C_z, *event)`` with matrix
        coefficients), is the (already scaled, e.g. preconditioned) noise of
        sub-step ``i``.
    fired : sequence of (array or None)
        Length ``K``; ``fired[i]`` indexes the members whose midpoint ``i``
        fires. See :func:`fired_from_mask`.
    chain : AffineChain
        The sub-step coefficients: floats, arrays broadcasting against ``x``
        (one coefficient per batch member, shape ``(B, 1, ...)``), or
        :class:`MatrixCoefficient`.
    weights : sequence of (float or array), optional
        The correction weight of each sub-step's midpoint; default
        :func:`correction_weights` of ``chain``. A caller that merges the
        sub-steps between the midpoints it will fire (so that one sub-step
        of ``chain`` is a whole gap of the fine chain, per member) passes the
        fine chain's weights here, an array of shape ``(B, 1, ...)`` where
        they differ by member.

    Returns
    -------
    x_new : array, shape (B, *event)
    info : PMMInfo
    """
    K = chain.K
    if len(fired) != K:
        raise ValueError(f"fired must have one entry per sub-step (K={K}), got {len(fired)}")
    if fired[0] is not None and fired[0].shape[0] > 0:
        raise ValueError("fired[0] must be None: the midpoint i=0 is the start point itself")
    xp = array_namespace(x, b0)

    points: list[Array] = []
    groups: list[tuple[int, Array]] = []
    xi = x
    for i in range(K):
        idx = fired[i]
        if idx is not None and idx.shape[0] > 0:
            points.append(xp.take(xi, idx, axis=0))
            groups.append((i, idx))
        xi = _apply(chain.a[i], xi) + _apply(chain.g[i], b0) + _apply(chain.s[i], noise[i])
    endpoint = xi
    if not points:
        return endpoint, PMMInfo(n_evals=0, groups=(), endpoint=endpoint)

    stacked = xp.concat(points, axis=0) if len(points) > 1 else points[0]
    b_mid = drift(stacked, tuple(groups))
    if tuple(b_mid.shape) != (stacked.shape[0], *b0.shape[1:]):
        raise ValueError(
            f"drift returned shape {tuple(b_mid.shape)} for points of shape "
            f"{tuple(stacked.shape)} (the drift at the start has shape {tuple(b0.shape)})"
        )
    if weights is None:
        weights = _cached_correction_weights(chain)
    x_new = endpoint
    start = 0
    for i, idx in groups:
        n = idx.shape[0]
        delta = b_mid[start : start + n] - xp.take(b0, idx, axis=0)
        x_new = _index_add(xp, x_new, idx, _apply(_take(weights[i], idx, xp), delta))
        start += n
    return x_new, PMMInfo(n_evals=int(stacked.shape[0]), groups=tuple(groups), endpoint=endpoint)
