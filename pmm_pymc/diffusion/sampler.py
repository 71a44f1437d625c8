"""Sampling a trained ε-prediction diffusion model with PMM, DDPM, DDIM or DPM-Solver++.

The reverse process of a DDPM with ``T`` training steps is the time-varying
affine chain

.. math::

    x_{n-1} = a_n x_n + g_n\\, \\varepsilon_\\theta(x_n, n) + s_n z_n, \\qquad
    a_n = \\frac{1}{\\sqrt{\\alpha_n}}, \\quad
    g_n = -\\frac{\\beta_n}{\\sqrt{\\alpha_n}\\sqrt{1 - \\bar\\alpha_n}},

with ``s_n^2 = beta_n`` or the posterior variance
``tilde beta_n = beta_n (1 - bar alpha_{n-1}) / (1 - bar alpha_n)``, and no
noise on the last step. The Poisson Midpoint Method (Kandasamy & Nagaraj, 2024)
groups the chain's steps into blocks and runs each block through
:func:`pmm_pymc.core.pmm_step`: one network call at the block start, a
frozen-ε rollout, and one batched call at the randomly fired midpoints, each at
its own timestep. A block of ``K`` steps costs ``2 - 1/K`` calls per sample on
average. ``"ddpm"`` and ``"ddim"`` are the same chain with blocks of one step
(so they also run through the core); ``"dpmsolver++"`` is the second-order
multistep solver of Lu et al. (2022), written directly.

The model convention is diffusers': ``model(x, t)`` with ``t`` a LongTensor of
training-timestep indices ``0..T-1`` of shape ``(batch,)``, returning the
predicted noise in the shape of ``x``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from pmm_pymc._validate import check_int
from pmm_pymc.core import AffineChain, fired_from_mask, pmm_step
from pmm_pymc.diffusion.noise import GeneratorArg, LazyNoise, RandomSource
from pmm_pymc.diffusion.schedules import DDPMSchedule, get_schedule

__all__ = [
    "METHODS",
    "DiffusionOutput",
    "block_stiffness",
    "expected_nfe",
    "pmm_blocks",
    "sample",
    "timestep_grid",
]

METHODS = ("pmm", "ddpm", "ddim", "dpmsolver++")
SPACINGS = ("linspace", "trailing", "leading", "quadratic")
VARIANCES = ("beta", "beta_tilde")
BLOCK_POLICIES = ("stiffness", "uniform")
_HALF = (torch.float16, torch.bfloat16)

#: The default PMM block layout, chosen on the digits64 testbed (docs/results-diffusion.md).
DEFAULT_POLICY = "stiffness"
DEFAULT_DATA_VAR = 0.01
DEFAULT_NFE = 80
#: Largest block stiffness (:func:`block_stiffness`) PMM runs without a warning.
MAX_STABLE_STIFFNESS = 1.0
#: With an NFE budget, PMM's chain has ``min(T, CHAIN_PER_NFE * nfe)`` steps by default.
CHAIN_PER_NFE = 5

Callback = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], None]


class DiffusionOutput(NamedTuple):
    """Result of :func:`sample`.

    Attributes
    ----------
    samples : torch.Tensor, shape (B, *event)
        The generated ``x_0``, in the state dtype (float32 for a half-precision
        model) on the sampling device.
    nfe : torch.Tensor, shape (B,), int64, on the CPU
        Network evaluations spent on each sample.
    n_passes : int
        Sequential network calls (forward passes of the whole batch); for PMM
        at most two per block however many midpoints fire.
    blocks : tuple of int
        The block sizes used (all ones for the baselines).
    """

    samples: torch.Tensor
    nfe: torch.Tensor
    n_passes: int
    blocks: tuple[int, ...]


# ----------------------------------------------------------------------------- grids and layouts
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
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, T={T}], got {steps!r}")
    steps = int(steps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
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


def _dpmsolver_grid(T: int, steps: int, spacing: str) -> np.ndarray:
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


def _validate_blocks(blocks: Sequence[int], steps: int) -> tuple[int, ...]:
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
    if K is not None:
        if isinstance(K, bool) or int(K) != K or not 1 <= K <= steps:
            raise ValueError(f"K must be an integer in [1, steps={steps}], got {K!r}")
        return _uniform_blocks(steps, int(K))
    if not (isinstance(nfe, int | float) and math.isfinite(nfe) and nfe >= 1):
        raise ValueError(f"nfe must be a number >= 1, got {nfe!r}")
    if policy not in BLOCK_POLICIES:
        raise ValueError(f"unknown block policy {policy!r}; valid: {', '.join(BLOCK_POLICIES)}")
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
    if not (math.isfinite(data_var) and data_var > 0):
        raise ValueError(f"data_var must be a number > 0, got {data_var!r}")
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


def _ddpm_coefficients(
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


def _ddim_coefficients(
    schedule: DDPMSchedule, t: int, t_prev: int, eta: float
) -> tuple[float, float, float]:
    """``(a, g, s)`` of the DDIM step ``x' = sqrt(ab') x0 + sqrt(1-ab'-sigma^2) eps + sigma z``."""
    ab_t, ab_p = _abar(schedule, t), _abar(schedule, t_prev)
    sigma = eta * math.sqrt((1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p))
    a = math.sqrt(ab_p / ab_t)
    g = math.sqrt(max(1.0 - ab_p - sigma * sigma, 0.0)) - a * math.sqrt(1.0 - ab_t)
    return a, g, sigma


@dataclass(frozen=True)
class _Block:
    timesteps: tuple[int, ...]  # timestep of each sub-step; [0] is the block start
    chain: AffineChain


def _plan(
    schedule: DDPMSchedule,
    grid: np.ndarray,
    blocks: Sequence[int],
    coefficients: Callable[[int, int], tuple[float, float, float]],
) -> list[_Block]:
    ts = [int(t) for t in grid] + [-1]
    plan: list[_Block] = []
    start = 0
    for k in blocks:
        sub = [coefficients(ts[j], ts[j + 1]) for j in range(start, start + k)]
        a, g, s = (tuple(c) for c in zip(*sub))
        plan.append(_Block(tuple(ts[start : start + k]), AffineChain(a, g, s)))
        start += k
    return plan


# ----------------------------------------------------------------------------- the network
class _Network:
    """Calls the model in its dtype, checks what comes back, counts passes, tracks NaNs."""

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        model_dtype: torch.dtype,
        state_dtype: torch.dtype,
        immediate_check: bool,
    ) -> None:
        self.model = model
        self.model_dtype = model_dtype
        self.state_dtype = state_dtype
        self.immediate_check = immediate_check
        self.flags: list[torch.Tensor] = []
        self.labels: list[str] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, label: str) -> torch.Tensor:
        out = self.model(x.to(self.model_dtype), t)
        if not torch.is_tensor(out):
            hint = (
                " (for a diffusers UNet, return `unet(x, t).sample`)"
                if hasattr(out, "sample")
                else ""
            )
            raise TypeError(f"the model must return a torch.Tensor, got {type(out)!r}{hint}")
        if out.shape != x.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input of shape "
                f"{tuple(x.shape)}; it must predict the noise, in the shape of x"
            )
        if out.device != x.device:
            raise ValueError(f"the model returned a tensor on {out.device} for input on {x.device}")
        out = out.to(self.state_dtype)
        bad = ~torch.isfinite(out).all()
        if self.immediate_check:
            if bool(bad):
                raise FloatingPointError(f"the model returned NaN or inf at {label}")
        else:  # no host synchronisation: look at the flags once, after the loop
            self.flags.append(bad)
            self.labels.append(label)
        return out

    def raise_if_bad(self) -> None:
        if not self.flags:
            return
        hits = torch.stack(self.flags).nonzero()
        if hits.numel():
            label = self.labels[int(hits[0, 0])]
            raise FloatingPointError(f"the model returned NaN or inf at {label}")


# ----------------------------------------------------------------------------- input checks
def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _model_parameter(model: Any) -> torch.Tensor | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p
    return None


def _resolve_dtypes(
    dtype: torch.dtype | None, x_T: torch.Tensor | None, param: torch.Tensor | None
) -> tuple[torch.dtype, torch.dtype]:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if param is not None and param.is_floating_point():
        if dtype is not None and dtype != param.dtype:
            raise ValueError(f"dtype={dtype} but the model's parameters are {param.dtype}")
        dtype = param.dtype
    if dtype is None:
        dtype = x_T.dtype if x_T is not None else torch.float32
    state = torch.float32 if dtype in _HALF else dtype
    if x_T is not None and x_T.dtype not in (dtype, state):
        raise ValueError(
            f"x_T has dtype {x_T.dtype} but the model runs in {dtype} (state in {state}); "
            "cast x_T or pass a matching dtype"
        )
    return dtype, state


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor | Sequence[int],
    schedule: DDPMSchedule | str = "linear",
    method: str = "pmm",
    *,
    steps: int | None = None,
    K: int | None = None,
    blocks: Sequence[int] | str | None = None,
    nfe: float | None = None,
    data_var: float = DEFAULT_DATA_VAR,
    eta: float = 0.0,
    variance: str = "beta_tilde",
    spacing: str = "linspace",
    generator: GeneratorArg = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> DiffusionOutput:
    """Draw samples from an ε-prediction diffusion model.

    Parameters
    ----------
    model : callable
        ``model(x, t) -> eps`` with ``x`` of shape ``(n, *event)`` in the model
        dtype and ``t`` a LongTensor of shape ``(n,)`` of training timesteps
        in ``0..T-1`` (diffusers' ``UNet2DModel`` convention; wrap one as
        ``lambda x, t: unet(x, t).sample``). PMM calls it with the fired
        midpoints of the whole batch at once, each with its own timestep.
    x_T : torch.Tensor or tuple of int
        The starting noise, shape ``(B, *event)``, or the shape to draw it in
        (from ``generator``).
    schedule : DDPMSchedule or {"linear", "cosine"}, default "linear"
        The training schedule (a name means the 1000-step one).
    method : {"pmm", "ddpm", "ddim", "dpmsolver++"}, default "pmm"
    steps : int, optional
        Length of the chain: the respaced timesteps of ``"ddpm"``, ``"ddim"``,
        ``"dpmsolver++"`` (default 50), or the ancestral chain PMM's blocks
        partition (default: ``T``, the fine chain, with ``K``; the sum of a
        list of ``blocks``; ``min(T, 5 nfe)`` with a budget, which did best
        on the digits64 testbed). ``1 <= steps <= T``.
    K : int, optional
        PMM: uniform blocks of ``K`` steps, ``1 <= K <= steps``. ``K = 1`` is
        the ancestral chain itself.
    blocks : sequence of int or {"stiffness", "uniform"}, optional
        PMM: the block sizes from high noise to the clean end (summing to
        ``steps``), or a layout policy of :func:`pmm_blocks` that spends the
        budget ``nfe``.
    nfe : float, optional
        PMM: the expected network evaluations per sample to spend with a
        layout policy; default 80 when neither ``K`` nor a list of ``blocks``
        is given. The default policy is ``"stiffness"``.
    data_var : float, default 0.01
        PMM: the data variance ``v`` of the ``"stiffness"`` policy (the
        thinnest direction whose spread matters, in the model's units) and of
        the stability warning.
    eta : float, default 0.0
        DDIM's noise: 0 is the deterministic sampler, 1 the ancestral one with
        the posterior variance.
    variance : {"beta_tilde", "beta"}, default "beta_tilde"
        Noise variance of the ancestral steps (PMM and DDPM): the posterior
        ``tilde beta`` (diffusers' "fixed_small") or ``beta`` ("fixed_large").
    spacing : {"linspace", "trailing", "leading", "quadratic"}, default "linspace"
        How a respaced chain picks its timesteps (:func:`timestep_grid`). For
        ``"dpmsolver++"`` the grid is that of diffusers'
        ``DPMSolverMultistepScheduler``: ``steps + 1`` points of the spacing
        with the last one (t = 0) dropped, so that the final step goes from
        about ``T/steps`` straight to the clean end (``"trailing"``, and
        ``steps = T``, are :func:`timestep_grid` itself).
    generator : torch.Generator or list of torch.Generator, optional
        Source of every random number (the Gaussians and PMM's Bernoullis).
        With a list of one generator per sample, each sample is the same
        whatever batch it is drawn in.
    device : torch.device or str, optional
        Sampling device; must match ``x_T``'s if that is a tensor. Default:
        ``x_T``'s, else the CPU.
    dtype : torch.dtype, optional
        The dtype the model is called in. Default: the model's parameter dtype
        (for a ``torch.nn.Module``), else ``x_T``'s, else float32. The state
        and all coefficient arithmetic stay in float32 for float16/bfloat16
        models.
    callback : callable, optional
        ``callback(x, t, x0_pred, nfe)`` after every block or step, with the
        new state, the timestep of the block's first network call, the clean
        sample predicted there, and the per-sample NFE so far.
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    DiffusionOutput
        ``samples``, per-sample ``nfe``, ``n_passes`` and the ``blocks`` used.

    Warns
    -----
    RuntimeWarning
        When a PMM block is stiffer than 1 (:func:`block_stiffness`): such
        layouts diverged or over-dispersed on the digits64 testbed.

    Raises
    ------
    ValueError
        Unknown method, schedule, spacing or variance; ``steps``, ``K`` or
        ``blocks`` out of range; a shape, device or dtype mismatch; a model
        output of the wrong shape.
    FloatingPointError
        The model returned NaN or inf (the message names the step and
        timestep). On the CPU the run stops at once; on an accelerator the
        check is made once after the loop, to avoid synchronising every step.

    Notes
    -----
    The random numbers are drawn in this order from each generator: ``x_T``
    (when a shape is given), PMM's uniforms for all its Bernoullis (the only
    host transfer, before the loop), then the Gaussians sub-step by sub-step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    schedule = get_schedule(schedule)
    T = schedule.T
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model)!r}")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    if not (isinstance(data_var, int | float) and math.isfinite(data_var) and data_var > 0):
        raise ValueError(f"data_var must be a number > 0, got {data_var!r}")
    if not (isinstance(eta, int | float) and 0.0 <= eta and math.isfinite(eta)):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if method != "pmm" and (K is not None or blocks is not None or nfe is not None):
        raise ValueError(f"K, blocks and nfe are options of method='pmm', not {method!r}")
    # ---- the chain length and the block layout
    if method == "pmm":
        if K is not None and (blocks is not None or nfe is not None):
            raise ValueError("give K, or blocks and/or nfe, not both")
        budget = None
        if K is None and (blocks is None or isinstance(blocks, str)):
            policy = DEFAULT_POLICY if blocks is None else blocks
            if policy not in BLOCK_POLICIES:
                raise ValueError(
                    f"unknown block policy {policy!r}; valid: {', '.join(BLOCK_POLICIES)}"
                )
            budget = DEFAULT_NFE if nfe is None else nfe
            if not (isinstance(budget, int | float) and math.isfinite(budget) and budget >= 1):
                raise ValueError(f"nfe must be a number >= 1, got {budget!r}")
        elif K is None and nfe is not None:
            raise ValueError("give a list of blocks or an nfe budget, not both")
        if steps is None:
            if budget is not None:
                steps = min(T, int(CHAIN_PER_NFE * budget))
            elif K is None:
                steps = sum(int(k) for k in blocks)  # type: ignore[union-attr]
            else:
                steps = T
    elif steps is None:
        steps = min(50, T)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if steps > T:
        raise ValueError(f"steps={steps} exceeds the schedule's T={T} training timesteps")
    steps = int(steps)
    grid = (
        _dpmsolver_grid(T, steps, spacing)
        if method == "dpmsolver++"
        else timestep_grid(T, steps, spacing)
    )
    if method != "pmm":
        layout: tuple[int, ...] = (1,) * steps
    elif K is not None:
        layout = pmm_blocks(steps, K=check_int("K", K, 1, steps))
    elif budget is not None:
        layout = pmm_blocks(
            steps, nfe=budget, policy=policy, schedule=schedule, timesteps=grid, data_var=data_var
        )
    else:
        layout = _validate_blocks(blocks, steps)  # type: ignore[arg-type]
    if method == "pmm" and max(layout) > 1:
        stiff = float(block_stiffness(layout, schedule, grid, data_var).max())
        if stiff > MAX_STABLE_STIFFNESS:
            warnings.warn(
                f"PMM blocks reach stiffness {stiff:.2f} > {MAX_STABLE_STIFFNESS} (data_var="
                f"{data_var}): such layouts diverged or over-dispersed on the digits64 testbed; "
                "spend more network evaluations (nfe >= 40 or so) or use 'dpmsolver++'",
                RuntimeWarning,
                stacklevel=3,  # past the torch.no_grad wrapper, to the caller
            )

    # ---- x_T, device, dtypes
    param = _model_parameter(model)
    if torch.is_tensor(x_T):
        if not x_T.is_floating_point():
            raise TypeError(f"x_T must be a floating-point tensor, got dtype {x_T.dtype}")
        if x_T.ndim < 1 or x_T.shape[0] < 1:
            raise ValueError(f"x_T must have shape (batch, *event), got {tuple(x_T.shape)}")
        if device is not None and not _same_device(torch.device(device), x_T.device):
            raise ValueError(f"device={device!r} but x_T is on {x_T.device}")
        dev = x_T.device
        shape = tuple(x_T.shape)
    else:
        try:
            shape = tuple(int(n) for n in x_T)
        except TypeError as err:
            raise TypeError(f"x_T must be a tensor or a shape, got {type(x_T)!r}") from err
        if not shape or any(n < 1 for n in shape):
            raise ValueError(f"the shape of x_T must be positive integers, got {shape}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
    if param is not None and not _same_device(param.device, dev):
        raise ValueError(f"the model is on {param.device} but the samples are on {dev}")
    model_dtype, state_dtype = _resolve_dtypes(dtype, x_T if torch.is_tensor(x_T) else None, param)
    B, event = shape[0], shape[1:]
    source = RandomSource(generator, B, dev)
    if torch.is_tensor(x_T):
        x = x_T.to(state_dtype)
    else:
        x = source.randn(event, state_dtype)

    net = _Network(model, model_dtype, state_dtype, immediate_check=dev.type == "cpu")
    if method == "dpmsolver++":
        x, n_passes = _dpmsolver_2m(net, x, schedule, grid, callback, progress)
        nfe_per = np.full(B, steps, dtype=np.int64)
    else:
        if method == "ddim":

            def coefficients(t: int, t_prev: int) -> tuple[float, float, float]:
                return _ddim_coefficients(schedule, t, t_prev, float(eta))
        else:

            def coefficients(t: int, t_prev: int) -> tuple[float, float, float]:
                return _ddpm_coefficients(schedule, t, t_prev, variance)

        plan = _plan(schedule, grid, layout, coefficients)
        x, nfe_per, n_passes = _run_blocks(net, x, schedule, plan, source, callback, progress)
    net.raise_if_bad()
    return DiffusionOutput(
        samples=x, nfe=torch.as_tensor(nfe_per), n_passes=n_passes, blocks=tuple(layout)
    )


def _run_blocks(
    net: _Network,
    x: torch.Tensor,
    schedule: DDPMSchedule,
    plan: list[_Block],
    source: RandomSource,
    callback: Callback | None,
    progress: bool,
) -> tuple[torch.Tensor, np.ndarray, int]:
    """The block loop shared by PMM, DDPM and DDIM."""
    B, event, dev = x.shape[0], tuple(x.shape[1:]), x.device
    sizes = [blk.chain.K for blk in plan]
    # all the Bernoullis of the run, drawn and turned into index tensors before the loop
    fired_all: list[list[torch.Tensor | None]] = []
    calls = np.ones((len(plan), B), dtype=np.int64)  # network evaluations per block and sample
    if max(sizes) > 1:
        u = source.uniforms(sum(sizes))
        offset = 0
        for b, k in enumerate(sizes):
            mask = u[:, offset : offset + k] < 1.0 / k
            mask[:, 0] = False
            calls[b] += mask.sum(axis=1)
            fired_all.append(fired_from_mask(mask.T, like=x))
            offset += k
    else:
        fired_all = [[None]] * len(plan)
    nfe_per = calls.sum(axis=0)
    nfe_so_far = np.zeros(B, dtype=np.int64)
    n_passes = 0
    n_blocks = len(plan)
    for b, (blk, fired) in enumerate(
        tqdm(zip(plan, fired_all), total=n_blocks, disable=not progress, desc="diffusion")
    ):
        t0 = blk.timesteps[0]
        eps0 = net(x, torch.full((B,), t0, dtype=torch.long, device=dev), _where(b, n_blocks, t0))
        n_passes += 1

        def drift(points: torch.Tensor, groups: Any, blk: _Block = blk, b: int = b) -> torch.Tensor:
            t = torch.cat(
                [
                    torch.full((idx.shape[0],), blk.timesteps[i], dtype=torch.long, device=dev)
                    for i, idx in groups
                ]
            )
            ts = [blk.timesteps[i] for i, _ in groups]
            where = _where(b, n_blocks, blk.timesteps[0])
            label = f"{where} (midpoints at timesteps {min(ts)}..{max(ts)})"
            return net(points, t, label)

        noise = LazyNoise(source, event, x.dtype, blk.chain.s)
        x_start = x
        x, info = pmm_step(drift, x, eps0, noise, fired, blk.chain)
        n_passes += info.n_evals > 0
        if callback is not None:
            nfe_so_far += calls[b]
            ab = float(schedule.alphas_cumprod[t0])
            x0_pred = (x_start - math.sqrt(1.0 - ab) * eps0) / math.sqrt(ab)
            callback(x, t0, x0_pred, torch.as_tensor(nfe_so_far.copy()))
    return x, nfe_per, n_passes


def _where(b: int, n: int, t: int) -> str:
    return f"step {b + 1} of {n} (timestep {t})"


def _dpmsolver_2m(
    net: _Network,
    x: torch.Tensor,
    schedule: DDPMSchedule,
    grid: np.ndarray,
    callback: Callback | None,
    progress: bool,
) -> tuple[torch.Tensor, int]:
    """DPM-Solver++(2M), data prediction, midpoint form, as diffusers' multistep scheduler.

    diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, final_sigmas_type="zero")`` given these timesteps: first
    order on the first step (no previous x0 yet), a final step to sigma = 0
    (its first-order update is the predicted x0), second order on every other
    step. (diffusers' ``lower_order_final`` below 15 steps lowers only the last
    step, already first order here, and third order to second on the one
    before.)
    """
    B, dev = x.shape[0], x.device
    S = grid.shape[0]
    ts = [int(t) for t in grid] + [-1]

    def alpha_sigma_lambda(t: int) -> tuple[float, float, float]:
        ab = _abar(schedule, t)
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        lam = math.log(alpha / sigma) if sigma > 0 else math.inf
        return alpha, sigma, lam

    m_prev: torch.Tensor | None = None
    lam_prev = 0.0
    for k in tqdm(range(S), disable=not progress, desc="dpmsolver++"):
        t, t_next = ts[k], ts[k + 1]
        a_t, s_t, l_t = alpha_sigma_lambda(t)
        a_n, s_n, l_n = alpha_sigma_lambda(t_next)
        eps = net(x, torch.full((B,), t, dtype=torch.long, device=dev), _where(k, S, t))
        x0 = (x - s_t * eps) / a_t
        if t_next < 0:
            x_new = x0
        else:
            h = l_n - l_t
            phi = math.expm1(-h)  # e^{-h} - 1
            if m_prev is None:
                x_new = (s_n / s_t) * x - a_n * phi * x0
            else:
                r0 = (l_t - lam_prev) / h
                d1 = (x0 - m_prev) / r0
                x_new = (s_n / s_t) * x - a_n * phi * x0 - 0.5 * a_n * phi * d1
        m_prev, lam_prev = x0, l_t
        x = x_new
        if callback is not None:
            callback(x, t, x0, torch.full((B,), k + 1, dtype=torch.long))
    return x, S
