"""Where a diffusion sampler steps: timestep grids, PMM block layouts and the chain's coefficients.

Everything here is decided before the first network call, from the schedule
alone: the descending training timesteps a sampler visits
(:func:`timestep_grid`), how PMM groups the chain's steps into blocks
(:func:`pmm_blocks`, :func:`block_stiffness`, :func:`expected_nfe`), and the
affine coefficients ``(a, g, s)`` of every step of that chain
(:func:`plan_blocks`), in the noise-prediction (``"eps"``) or the
data-prediction (``"x0"``) parameterisation of the drift. The samplers of
:mod:`pmm_pymc.diffusion.sampler` only run the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pmm_pymc._validate import check_choice, check_int, check_real
from pmm_pymc.core import AffineChain
from pmm_pymc.diffusion.schedules import DDPMSchedule

__all__ = [
    "BLOCK_POLICIES",
    "PARAMETERIZATIONS",
    "SPACINGS",
    "VARIANCES",
    "Block",
    "block_stiffness",
    "ddim_coefficients",
    "ddpm_coefficients",
    "dpmsolver_grid",
    "expected_nfe",
    "pmm_blocks",
    "plan_blocks",
    "timestep_grid",
    "validate_blocks",
    "x0_coefficients",
]

SPACINGS = ("linspace", "trailing", "leading", "quadratic")
VARIANCES = ("beta", "beta_tilde")
BLOCK_POLICIES = ("stiffness", "uniform")
#: The drift PMM freezes through a block: the predicted noise or the predicted clean sample.
PARAMETERIZATIONS = ("eps", "x0")

#: The default PMM block layout, chosen on the digits64 testbed (docs/results-diffusion.md).
DEFAULT_POLICY = "stiffness"
DEFAULT_DATA_VAR = 0.01


def timestep_grid(T: int, steps: int, spacing: str = "linspace") -> np.ndarray:
    """The descending training timesteps a ``steps``-step sampler visits.

    Parameters
    ----------
    T : int
        Training timesteps of the schedule.
    steps : int
        Number of sampler steps, ``1 <= steps <= T``.
    spacing : {"linspace", "trailing", "leading", "quadratic"}, default "linspace"
        ``"linspace"`` rounds ``linspace(0, T-1, steps)`` (it starts at
        ``T-1`` and ends at 0); ``"trailing"`` is ``T - k T/steps`` minus one
        (diffusers' "trailing"); ``"leading"`` is ``k (T // steps)``
        (diffusers' "leading", which never reaches ``T-1``); ``"quadratic"``
        spaces ``sqrt(t)`` evenly (denser at low noise, as in the DDIM paper).
        With ``steps == T`` all of them give every timestep.

    Returns
    -------
    numpy.ndarray of int64, shape (steps,)
        Strictly decreasing timesteps.
    """
    T = int(T)
    steps = check_int("steps", steps, 1, T)
    check_choice("spacing", spacing, SPACINGS)
    if steps == T:
        return np.arange(T - 1, -1, -1, dtype=np.int64)
    if spacing == "linspace":
        t = np.round(np.linspace(0, T - 1, steps))
    elif spacing == "trailing":
        # diffusers' values; its arange can round to steps + 1 entries, the last one -1
        t = np.round(np.arange(T, 0, -T / steps)[:steps]) - 1
    elif spacing == "leading":
        t = np.arange(steps) * (T // steps)
    else:
        t = np.round(np.linspace(0.0, math.sqrt(T - 1), steps) ** 2)
    t = np.unique(t.astype(np.int64))[::-1]
    if t.shape[0] != steps:  # rounding collisions (only for steps close to T): fill from the top
        missing = np.setdiff1d(np.arange(T), t)[::-1][: steps - t.shape[0]]
        t = np.sort(np.concatenate([t, missing]))[::-1]
    return np.ascontiguousarray(t)


def dpmsolver_grid(T: int, steps: int, spacing: str) -> np.ndarray:
    """The timesteps of diffusers' ``DPMSolverMultistepScheduler.set_timesteps``.

    Its "linspace" and "leading" take ``steps + 1`` points and drop the last
    (t = 0): no network call is spent at t = 0, where the solver's final jump to
    sigma = 0 would start from a nearly clean state after a very long step.
    """
    if steps == T or spacing == "trailing":
        return timestep_grid(T, steps, spacing)
    return np.ascontiguousarray(timestep_grid(T, steps + 1, spacing)[:-1])


def expected_nfe(blocks: Sequence[int]) -> float:
    """Expected network evaluations per sample of a PMM layout: ``sum_b (2 - 1/K_b)``."""
    return float(sum(2.0 - 1.0 / k for k in blocks))


def validate_blocks(blocks: Sequence[int], steps: int) -> tuple[int, ...]:
    """``blocks`` as a tuple of positive ints summing to ``steps``, or a clear error."""
    try:
        out = tuple(int(k) for k in blocks)
    except (TypeError, ValueError) as err:
        raise TypeError(f"blocks must be a sequence of integers, got {blocks!r}") from err
    if any(k < 1 or k != b for k, b in zip(out, blocks)):
        raise ValueError(f"every block size must be an integer >= 1, got {list(blocks)}")
    if sum(out) != steps:
        raise ValueError(f"block sizes must sum to the chain length steps={steps}, got {sum(out)}")
    return out


def _uniform_blocks(steps: int, K: int) -> tuple[int, ...]:
    n_full, rest = divmod(steps, K)
    return (K,) * n_full + ((rest,) if rest else ())


def _stiffness_weights(abar: np.ndarray, data_var: float) -> np.ndarray:
    """Per-step stiffness ``beta_n / (sqrt(alpha_n) (abar_n v + 1 - abar_n))``.

    ``abar`` runs along the chain, from high noise down to the clean end
    (whose ``abar`` is 1). For a data direction of variance ``v`` the exact ε
    at noise level ``abar`` has slope ``sqrt(1 - abar) / (abar v + 1 - abar)``
    along it, so the step's drift ``g_n ε`` has Lipschitz constant ``|g_n|``
    times that: the weight above. It is about ``beta_n`` at high noise and
    ``beta_n / v`` at the clean end, where the thin directions make ε stiff.
    """
    ab_t, ab_p = abar[:-1], abar[1:]
    alpha = ab_t / ab_p
    return (1.0 - alpha) / (np.sqrt(alpha) * (ab_t * data_var + 1.0 - ab_t))


def _equal_weight_blocks(weights: np.ndarray, n_blocks: int) -> tuple[int, ...]:
    """Partition the steps into ``n_blocks`` contiguous blocks of about equal total weight."""
    steps = weights.shape[0]
    cum = np.concatenate([[0.0], np.cumsum(weights)])
    total = cum[-1]
    ends = [0]
    for k in range(1, n_blocks + 1):
        j = int(np.searchsorted(cum, total * k / n_blocks - 1e-12 * total, side="left"))
        j = min(max(j, ends[-1] + 1), steps - (n_blocks - k))
        ends.append(j)
    ends[-1] = steps
    return tuple(int(b) for b in np.diff(ends))


def block_stiffness(
    blocks: Sequence[int],
    schedule: DDPMSchedule,
    timesteps: Sequence[int],
    data_var: float = DEFAULT_DATA_VAR,
) -> np.ndarray:
    """The stiffness of each block of a layout (see :func:`pmm_blocks`, policy "stiffness").

    Parameters
    ----------
    blocks : sequence of int
    schedule : DDPMSchedule
    timesteps : sequence of int
        The chain's descending timesteps, one per step.
    data_var : float, default 0.01

    Returns
    -------
    numpy.ndarray, shape (n_blocks,)
        ``sum_n beta_n / (sqrt(alpha_n) (abar_n v + 1 - abar_n))`` over each
        block. On the digits64 testbed, layouts whose largest block stiffness
        exceeded 1 diverged or came out clearly over-dispersed.
    """
    t = np.asarray(timesteps, dtype=np.int64)
    w = _stiffness_weights(np.concatenate([schedule.alphas_cumprod[t], [1.0]]), data_var)
    ends = np.cumsum((0, *blocks))
    return np.array([w[a:b].sum() for a, b in zip(ends[:-1], ends[1:])])


def pmm_blocks(
    steps: int,
    *,
    nfe: float | None = None,
    K: int | None = None,
    policy: str = DEFAULT_POLICY,
    schedule: DDPMSchedule | None = None,
    timesteps: Sequence[int] | None = None,
    data_var: float = DEFAULT_DATA_VAR,
) -> tuple[int, ...]:
    """A PMM block layout: the sizes of the blocks from high noise to the clean end.

    Parameters
    ----------
    steps : int
        Length of the chain the blocks partition (``T`` for the fine chain).
    nfe : float, optional
        Budget: the layout with the largest expected network evaluations per
        sample (:func:`expected_nfe`) not above ``nfe``.
    K : int, optional
        Uniform blocks of ``K`` steps (the last one shorter if ``K`` does not
        divide ``steps``). Give exactly one of ``nfe`` and ``K``; ``K``
        implies ``policy="uniform"``.
    policy : {"stiffness", "uniform"}, default "stiffness"
        ``"uniform"``: equal blocks. ``"stiffness"``: blocks of equal total
        stiffness ``sum_n beta_n / (sqrt(alpha_n) (abar_n v + 1 - abar_n))``,
        the Lipschitz constant of the steps' drift along a data direction of
        variance ``v = data_var``; the blocks shrink where ε is stiff (at
        high noise, where the betas are large, and most at the clean end).
        Needs ``schedule``.
    schedule : DDPMSchedule, optional
        Needed by ``"stiffness"``.
    timesteps : sequence of int, optional
        The chain's descending timesteps (default: all ``steps`` of a
        ``steps = T`` chain, or :func:`timestep_grid`).
    data_var : float, default 0.01
        ``v`` of ``"stiffness"``: the smallest data variance (in the model's
        units) whose spread should be kept; smaller is more conservative.

    Returns
    -------
    tuple of int
        Block sizes summing to ``steps``.
    """
    if (nfe is None) == (K is None):
        raise ValueError("give exactly one of nfe (a budget) and K (uniform block size)")
    steps = check_int("steps", steps, 1)
    if K is not None:
        return _uniform_blocks(steps, check_int("K", K, 1, steps))
    nfe = check_real("nfe", nfe, ge=1)
    check_choice("blocks policy", policy, BLOCK_POLICIES)
    if nfe >= steps:
        return (1,) * steps
    if policy == "uniform":
        best = (steps,)
        for k in range(steps, 0, -1):
            layout = _uniform_blocks(steps, k)
            if expected_nfe(layout) <= nfe:
                best = layout
            else:
                break
        return best
    if schedule is None:
        raise ValueError("policy 'stiffness' needs the schedule")
    data_var = check_real("data_var", data_var, gt=0)
    if timesteps is None:
        timesteps = timestep_grid(schedule.T, steps)
    t = np.asarray(timesteps, dtype=np.int64)
    if t.shape != (steps,):
        raise ValueError(f"timesteps must have length steps={steps}, got {t.shape}")
    weights = _stiffness_weights(np.concatenate([schedule.alphas_cumprod[t], [1.0]]), data_var)
    best = (steps,)
    lo, hi = 1, steps  # expected_nfe grows with the number of blocks: bisect on it
    while lo <= hi:
        mid = (lo + hi) // 2
        layout = _equal_weight_blocks(weights, mid)
        if expected_nfe(layout) <= nfe:
            best, lo = layout, mid + 1
        else:
            hi = mid - 1
    return best


# ----------------------------------------------------------------------------- coefficients
def _abar(schedule: DDPMSchedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def ddpm_coefficients(
    schedule: DDPMSchedule, t: int, t_prev: int, variance: str
) -> tuple[float, float, float]:
    """``(a, g, s)`` of the (respaced) ancestral step from ``t`` to ``t_prev`` (-1: clean)."""
    ab_t, ab_p = _abar(schedule, t), _abar(schedule, t_prev)
    alpha = ab_t / ab_p
    beta = 1.0 - alpha
    a = 1.0 / math.sqrt(alpha)
    g = -beta / (math.sqrt(alpha) * math.sqrt(1.0 - ab_t))
    if t_prev < 0:
        s = 0.0
    elif variance == "beta":
        s = math.sqrt(beta)
    else:
        s = math.sqrt(beta * (1.0 - ab_p) / (1.0 - ab_t))
    return a, g, s


def ddim_coefficients(
    schedule: DDPMSchedule, t: int, t_prev: int, eta: float
) -> tuple[float, float, float]:
    """``(a, g, s)`` of the DDIM step ``x' = sqrt(ab') x0 + sqrt(1-ab'-sigma^2) eps + sigma z``."""
    ab_t, ab_p = _abar(schedule, t), _abar(schedule, t_prev)
    sigma = eta * math.sqrt((1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p))
    a = math.sqrt(ab_p / ab_t)
    g = math.sqrt(max(1.0 - ab_p - sigma * sigma, 0.0)) - a * math.sqrt(1.0 - ab_t)
    return a, g, sigma


def x0_coefficients(
    schedule: DDPMSchedule, t: int, a: float, g: float, s: float
) -> tuple[float, float, float]:
    """The step ``a x + g eps(x, t) + s z`` written over the predicted clean sample.

    With ``x0(x, t) = (x - sigma_t eps) / alpha_t`` (``alpha_t^2 = abar_t``,
    ``sigma_t^2 = 1 - abar_t``) the same step is
    ``(a + g / sigma_t) x - (g alpha_t / sigma_t) x0(x, t) + s z``. For the
    ancestral step with the posterior variance this is the exponential
    integrator of the data-prediction SDE (first-order SDE-DPM-Solver++):
    ``x' = (sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) x0 + s z``.
    The fine chain is the same; what changes is the drift PMM freezes through
    a block: ``x0`` stays bounded near the clean end, where ``eps`` is stiff.
    """
    ab = _abar(schedule, t)
    alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
    return a + g / sigma, -g * alpha / sigma, s


@dataclass(frozen=True)
class Block:
    """One block of a plan: the sub-steps' timesteps and their coefficients.

    Attributes
    ----------
    timesteps : tuple of int
        The training timestep of each sub-step; ``timesteps[0]`` is where the
        block's first network call is made.
    chain : AffineChain
        The ``K`` sub-steps ``x' = a x + g b(x, t) + s z``.
    parameterization : {"eps", "x0"}
        The drift ``b``: the predicted noise or the predicted clean sample.
    """

    timesteps: tuple[int, ...]
    chain: AffineChain
    parameterization: str = "eps"


def plan_blocks(
    schedule: DDPMSchedule,
    grid: Sequence[int],
    blocks: Sequence[int],
    coefficients: Callable[[int, int], tuple[float, float, float]],
    parameterization: str = "eps",
) -> list[Block]:
    """The chain on ``grid`` (ending at the clean sample) cut into ``blocks``.

    Parameters
    ----------
    schedule : DDPMSchedule
    grid : sequence of int
        Descending timesteps, one per step of the chain.
    blocks : sequence of int
        Block sizes summing to ``len(grid)``.
    coefficients : callable
        ``coefficients(t, t_prev) -> (a, g, s)`` of the step from ``t`` to
        ``t_prev`` (``-1``: the clean end) over the predicted noise, e.g.
        :func:`ddpm_coefficients`.
    parameterization : {"eps", "x0"}, default "eps"
        The drift of the returned chains: the predicted noise, or the
        predicted clean sample (:func:`x0_coefficients`).

    Returns
    -------
    list of Block
    """
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    ts = [int(t) for t in grid] + [-1]
    plan: list[Block] = []
    start = 0
    for k in blocks:
        sub = []
        for j in range(start, start + k):
            a, g, s = coefficients(ts[j], ts[j + 1])
            if parameterization == "x0":
                a, g, s = x0_coefficients(schedule, ts[j], a, g, s)
            sub.append((a, g, s))
        a_, g_, s_ = (tuple(c) for c in zip(*sub))
        plan.append(Block(tuple(ts[start : start + k]), AffineChain(a_, g_, s_), parameterization))
        start += k
    return plan
