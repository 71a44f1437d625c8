"""One recorded draw of a Langevin sampler: its transitions and warm-up updates, once.

Both samplers record a draw after ``blocks_per_draw`` transitions
(:func:`pmm_pymc.mcmc.kernel.transition`), each followed by the warm-up update while
tuning (:meth:`pmm_pymc.mcmc.warmup.Warmup.update`): the PyMC step methods over one row,
:func:`pmm_pymc.mcmc.chains.sample_chains` over one row per chain. :func:`advance` is that
loop, so the two samplers hold no copy of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from pmm_pymc.mcmc.kernel import (
    LangevinDraws,
    LangevinInfo,
    LangevinParams,
    LangevinState,
    LogpGrad,
    combine_info,
    draw,
    refresh_velocity,
    transition,
)
from pmm_pymc.mcmc.warmup import Warmup

__all__ = ["Advance", "advance"]


class Advance(NamedTuple):
    """What :func:`advance` did.

    Attributes
    ----------
    state : LangevinState
        The rows after the last transition (``v`` is ``None`` for kinetic Langevin when the
        last warm-up update changed the preconditioner: the next draw refreshes it).
    info : LangevinInfo
        The transitions' infos combined (:func:`pmm_pymc.mcmc.kernel.combine_info`).
    n_evals : int
        Gradient evaluations per row spent by the warm-up (curvature measurements), beyond
        those in ``info.n_steps``.
    params : LangevinParams
        The last transition's parameters (its step size is the draw's ``step_size`` stat).
    """

    state: LangevinState
    info: LangevinInfo
    n_evals: int
    params: LangevinParams


def advance(
    logp_grad: LogpGrad,
    state: LangevinState,
    warmup: Warmup,
    rng: np.random.Generator,
    *,
    K: int,
    n_blocks: int,
    max_energy_error: float,
    tuning: bool,
    gap: bool | None = None,
    draw_fn: Callable[..., LangevinDraws] | None = None,
) -> Advance:
    """Run ``n_blocks`` transitions of every row of ``state``, updating ``warmup`` while tuning.

    Kinetic Langevin (``warmup.friction`` set) needs velocities: where ``state.v`` is
    ``None`` (the start, a point another step moved) they are drawn from ``N(0, M^{-1})``
    first, from ``rng``, and again after a warm-up update that changed the preconditioner.

    Parameters
    ----------
    logp_grad : callable
        ``logp_grad(points) -> (logp, grad)`` on rows.
    state : LangevinState
    warmup : Warmup
        Holds the step size, preconditioner and friction of the transitions.
    rng : numpy.random.Generator
        Draws the random numbers, in the order of :func:`pmm_pymc.mcmc.kernel.draw`,
        preceded by the velocities where they are refreshed.
    K : int
    n_blocks : int
        Transitions per draw (``blocks_per_draw``).
    max_energy_error : float
    tuning : bool
        Adjust the moves (when the warm-up adapts something) and update the warm-up.
    gap : bool, optional
        Passed to :func:`pmm_pymc.mcmc.kernel.draw`.
    draw_fn : callable, optional
        ``draw_fn(rng, K, B, d, adjust=...)`` instead of :func:`pmm_pymc.mcmc.kernel.draw`
        (e.g. :func:`pmm_pymc.mcmc.kernel.draw_randomized_midpoint`).

    Returns
    -------
    Advance
    """
    kinetic = warmup.friction is not None
    B, d = state.x.shape
    infos = []
    n_evals = 0
    for _ in range(n_blocks):
        if kinetic and state.v is None:
            state = state._replace(v=refresh_velocity(rng, warmup.metric, B, d))
        params = LangevinParams(
            warmup.step_size,
            K,
            warmup.metric,
            max_energy_error,
            adjust=tuning and warmup.adjusts,
            friction=warmup.friction,
        )
        if draw_fn is None:
            randoms = draw(rng, K, B, d, adjust=params.adjust, gap=gap, kinetic=kinetic)
        else:
            randoms = draw_fn(rng, K, B, d, adjust=params.adjust)
        state, info = transition(logp_grad, randoms, state, params)
        infos.append(info)
        if tuning:
            metric = warmup.metric
            state, spent = warmup.update(state, info, logp_grad)
            n_evals += spent
            if kinetic and warmup.metric is not metric:
                state = state._replace(v=None)
    return Advance(state, combine_info(infos), n_evals, params)
