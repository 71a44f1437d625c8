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
frozen-drift rollout, and one batched call at the randomly fired midpoints, each
at its own timestep. A block of ``K`` steps costs ``2 - 1/K`` calls per sample
on average. A block whose midpoint correction would amplify the state (its
secant gain, measured from the network's outputs at the fired midpoints, above
``max_gain``) falls back to the frozen-drift endpoint, for the samples
concerned; :attr:`DiffusionOutput.fallbacks` counts them.

The module is a thin facade, :func:`sample`, over one short public function per
sampler, each owning its loop, in the manner of k-diffusion: the timestep grid,
the block layout and the coefficients are built outside
(:mod:`pmm_pymc.diffusion.layout`), the random numbers come from an injected
:class:`~pmm_pymc.diffusion.noise.RandomSource`:

* :func:`sample_pmm`: PMM over a plan of blocks;
* :func:`sample_ddpm`, :func:`sample_ddim`: the same chain with blocks of one
  step (so they also run through the core);
* :func:`sample_dpmsolver`: the second-order multistep solver of Lu et al.
  (2022), written directly.

The model convention is diffusers': ``model(x, t)`` with ``t`` a LongTensor of
training-timestep indices ``0..T-1`` of shape ``(batch,)``, returning the
predicted noise in the shape of ``x``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from pmm_pymc._validate import check_choice, check_int, check_real
from pmm_pymc.core import correction_weights, fired_from_mask, pmm_step
from pmm_pymc.diffusion.gaps import gap_block, gap_tables
from pmm_pymc.diffusion.layout import (
    BLOCK_POLICIES,
    DEFAULT_DATA_VAR,
    DEFAULT_POLICY,
    PARAMETERIZATIONS,
    SPACINGS,
    VARIANCES,
    Block,
    _abar,
    block_stiffness,
    ddim_coefficients,
    ddpm_coefficients,
    dpmsolver_grid,
    expected_nfe,
    plan_blocks,
    pmm_blocks,
    timestep_grid,
    validate_blocks,
)
from pmm_pymc.diffusion.noise import GeneratorArg, LazyNoise, RandomSource
from pmm_pymc.diffusion.schedules import DDPMSchedule, get_schedule

__all__ = [
    "METHODS",
    "DiffusionOutput",
    "Network",
    "block_stiffness",
    "expected_nfe",
    "pmm_blocks",
    "sample",
    "sample_ancestral",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmsolver",
    "sample_pmm",
    "timestep_grid",
]

METHODS = ("pmm", "ddpm", "ddim", "dpmsolver++")
_HALF = (torch.float16, torch.bfloat16)

DEFAULT_NFE = 80
#: Largest block stiffness (:func:`block_stiffness`) PMM runs without a warning.
MAX_STABLE_STIFFNESS = 1.0
#: With an NFE budget, PMM's chain has ``min(T, CHAIN_PER_NFE[parameterization] * nfe)``
#: steps by default (chosen on digits64 and aniso64, docs/results-diffusion.md).
CHAIN_PER_NFE = {"eps": 5.0, "x0": 1.25}
#: Largest secant gain of a midpoint correction PMM keeps (see :func:`sample_pmm`).
DEFAULT_MAX_GAIN = 1.0
#: ``parameterization="auto"`` freezes the predicted clean sample below this NFE budget and
#: the predicted noise from it (chosen on digits64 and aniso64, docs/results-diffusion.md).
X0_BELOW_NFE = 40

Callback = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], None]


class DiffusionOutput(NamedTuple):
    """Result of :func:`sample` and of the samplers' loops.

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
    fallbacks : torch.Tensor, shape (B,), int64, on the CPU
        PMM: the blocks of each sample whose midpoint correction was refused
        by the stability guard (the sample took the frozen-drift endpoint);
        zeros for the other samplers.
    """

    samples: torch.Tensor
    nfe: torch.Tensor
    n_passes: int
    blocks: tuple[int, ...]
    fallbacks: torch.Tensor


# ----------------------------------------------------------------------------- the network
class Network:
    """The model as the samplers call it: in its dtype, checked, with non-finite values tracked.

    Parameters
    ----------
    model : callable
        ``model(x, t) -> eps`` (see :func:`sample`).
    model_dtype, state_dtype : torch.dtype
        The dtype the model is called in, and the dtype of the state and of
        what the model returns once cast.
    immediate_check : bool
        Raise at the first non-finite value (on the CPU); otherwise record
        device-side flags and look at them once, in :meth:`raise_if_bad`, so
        that an accelerator's loop never waits on the host.
    """

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
        self.messages: list[str] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, where: str) -> torch.Tensor:
        """The model's ε at ``(x, t)``, checked; ``where`` names the step for the errors."""
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
        if not self.immediate_check:  # no host synchronisation: the flags are read after the loop
            self.flags.append(bad)
            self.messages.append(f"the model returned NaN or inf at {where}")
        elif bool(bad):
            if not bool(torch.isfinite(x).all()):  # the state was bad before the model saw it
                self.check_state(x, where)
            raise FloatingPointError(f"the model returned NaN or inf at {where}")
        return out

    def check_state(self, x: torch.Tensor, where: str) -> None:
        """Flag a non-finite state at ``where`` (the model's outputs so far were finite)."""
        self._check(
            x,
            f"the state became NaN or inf at {where} although the model's outputs were "
            "finite: a step overflowed (outputs or a start too large for the state dtype?)",
        )

    def _check(self, value: torch.Tensor, message: str) -> None:
        bad = ~torch.isfinite(value).all()
        if self.immediate_check:
            if bool(bad):
                raise FloatingPointError(message)
        else:  # no host synchronisation: look at the flags once, after the loop
            self.flags.append(bad)
            self.messages.append(message)

    def raise_if_bad(self) -> None:
        """Raise the first recorded non-finite value, if any (after the loop)."""
        if not self.flags:
            return
        hits = torch.stack(self.flags).nonzero()
        if hits.numel():
            raise FloatingPointError(self.messages[int(hits[0, 0])])


class _EpsDrift:
    """PMM's drift over the predicted noise (the model's own output)."""

    def __init__(self, net: Network, schedule: DDPMSchedule) -> None:
        self.net = net
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t: torch.Tensor, where: str) -> torch.Tensor:
        return self.net(x, t, where)

    def predict_x0(self, x: torch.Tensor, drift: torch.Tensor, t: int) -> torch.Tensor:
        ab = _abar(self.schedule, t)
        return (x - math.sqrt(1.0 - ab) * drift) / math.sqrt(ab)


class _X0Drift(_EpsDrift):
    """PMM's drift over the predicted clean sample ``(x - sigma_t eps) / alpha_t``."""

    def __init__(self, net: Network, schedule: DDPMSchedule, like: torch.Tensor) -> None:
        super().__init__(net, schedule)
        ab = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64)
        self.alpha = ab.sqrt().to(device=like.device, dtype=like.dtype)
        self.sigma = (1.0 - ab).sqrt().to(device=like.device, dtype=like.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, where: str) -> torch.Tensor:
        eps = self.net(x, t, where)
        view = (-1,) + (1,) * (x.ndim - 1)
        return (x - self.sigma[t].view(view) * eps) / self.alpha[t].view(view)

    def predict_x0(self, x: torch.Tensor, drift: torch.Tensor, t: int) -> torch.Tensor:
        return drift


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


# ----------------------------------------------------------------------------- the samplers' loops
def _where(b: int, n: int, t: int) -> str:
    return f"step {b + 1} of {n} (timestep {t})"


def _as_network(model: Network | Callable, x: torch.Tensor) -> Network:
    if isinstance(model, Network):
        return model
    return Network(model, x.dtype, x.dtype, immediate_check=x.device.type == "cpu")


def _firing(plan: Sequence[Block], source: RandomSource) -> tuple[list[np.ndarray], np.ndarray]:
    """Every Bernoulli of the run, drawn before the loop: one ``(B, K)`` mask per block
    (column 0 False), and the network evaluations per block and sample."""
    B = source.batch
    sizes = [blk.chain.K for blk in plan]
    calls = np.ones((len(plan), B), dtype=np.int64)
    if max(sizes) == 1:
        return [np.zeros((B, 1), dtype=bool)] * len(plan), calls
    masks = []
    u = source.uniforms(sum(sizes))
    offset = 0
    for b, k in enumerate(sizes):
        mask = u[:, offset : offset + k] < 1.0 / k
        mask[:, 0] = False
        calls[b] += mask.sum(axis=1)
        masks.append(mask)
        offset += k
    return masks, calls


class _BlockRun(NamedTuple):
    """What one block's :func:`~pmm_pymc.core.pmm_step` is called with (built before the loop)."""

    chain: Any
    fired: list
    weights: Sequence[Any]
    times: Callable[[int, torch.Tensor], torch.Tensor]
    noise: Any
    label: str


def _block_runs(
    plan: Sequence[Block],
    masks: list[np.ndarray],
    source: RandomSource,
    x: torch.Tensor,
    noise_by: str,
) -> list[_BlockRun]:
    event, dev = tuple(x.shape[1:]), x.device
    runs = []
    for blk, mask in zip(plan, masks):
        fired_steps = np.flatnonzero(mask.any(axis=0))
        ts = [blk.timesteps[i] for i in fired_steps]
        label = f" (midpoints at timesteps {min(ts)}..{max(ts)})" if ts else ""
        if noise_by == "gap" and blk.chain.K > 1:
            gb = gap_block(blk.chain, blk.timesteps, mask, gap_tables(blk.chain), x)
            runs.append(
                _BlockRun(
                    gb.chain,
                    gb.fired,
                    gb.weights,
                    lambda i, idx, gb=gb: gb.timesteps[i][idx],
                    _GapNoise(source, x, gb.draws, gb.draw_index),
                    label,
                )
            )
            continue
        runs.append(
            _BlockRun(
                blk.chain,
                fired_from_mask(mask.T, like=x),
                correction_weights(blk.chain),
                lambda i, idx, blk=blk: torch.full(
                    (idx.shape[0],), blk.timesteps[i], dtype=torch.long, device=dev
                ),
                LazyNoise(source, event, x.dtype, blk.chain.s),
                label,
            )
        )
    return runs


class _GapNoise:
    """``noise[l]``: one standard Gaussian per member whose merged sub-step ``l`` is a real
    gap (zeros for the others, whose step there is the identity)."""

    def __init__(self, source: RandomSource, like: torch.Tensor, draws: list, index: list) -> None:
        self.source, self.like, self.draws, self.index = source, like, draws, index

    def __getitem__(self, level: int) -> torch.Tensor:
        event, dtype = tuple(self.like.shape[1:]), self.like.dtype
        index = self.index[level]
        if self.source.per_member is not None or index is None:
            return self.source.randn(event, dtype, members=self.draws[level])
        z = torch.zeros_like(self.like)
        z[index] = self.source.randn_rows(index.shape[0], event, dtype)
        return z


def sample_pmm(
    model: Network | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    plan: Sequence[Block],
    source: RandomSource,
    schedule: DDPMSchedule,
    *,
    max_gain: float | None = DEFAULT_MAX_GAIN,
    noise_by: str = "gap",
    callback: Callback | None = None,
    progress: bool = False,
) -> DiffusionOutput:
    """PMM over a plan of blocks (:func:`pmm_pymc.diffusion.layout.plan_blocks`).

    Each block is one :func:`pmm_pymc.core.pmm_step`: the drift at the block
    start, a frozen-drift rollout, and one batched network call at the fired
    midpoints. The stability guard measures, for every fired midpoint ``i`` of
    a sample, the secant gain of its correction

    .. math::

        \\gamma_i = |w_i|\\, \\frac{\\lVert b(\\hat x_i, \\tau_i) - b_0 \\rVert}
        {\\lVert \\hat x_i - x \\rVert},

    with ``w_i`` the correction's weight (:func:`pmm_pymc.core.correction_weights`):
    the factor by which the correction amplifies the midpoint's displacement
    (on Langevin dynamics, ``eta L``, the quantity of the MCMC steps' guard).
    A sample whose largest gain in the block exceeds ``max_gain`` takes the
    frozen-drift endpoint instead: the block's first-order step, which does
    not amplify. Nothing else is spent: the gain is made of what the block
    computed.

    Parameters
    ----------
    model : Network or callable
        The ε-model (a bare callable is wrapped in a :class:`Network` in the
        state's dtype).
    x : torch.Tensor, shape (B, *event)
        The starting noise.
    plan : sequence of Block
        The blocks, from high noise to the clean end, all of one
        parameterisation.
    source : RandomSource
        Where the uniforms (drawn once, before the loop) and the Gaussians
        (sub-step by sub-step) come from.
    schedule : DDPMSchedule
    max_gain : float or None, default 1.0
        The guard's threshold; ``None`` turns the guard off (the scheme as
        published).
    noise_by : {"gap", "substep"}, default "gap"
        ``"gap"``: each member advances from one fired midpoint to the next
        in one step with one Gaussian (:mod:`pmm_pymc.diffusion.gaps`; the
        same distribution, a fraction of the work). ``"substep"``: one
        Gaussian per sub-step of the fine chain, as the scheme is written
        (reproducible against a plain loop).
    callback, progress
        As for :func:`sample`.

    Returns
    -------
    DiffusionOutput
    """
    net = _as_network(model, x)
    kinds = {blk.parameterization for blk in plan}
    if len(kinds) != 1:
        raise ValueError(f"the plan mixes parameterizations {sorted(kinds)}")
    drift_fn = _X0Drift(net, schedule, x) if kinds == {"x0"} else _EpsDrift(net, schedule)
    if max_gain is not None:
        max_gain = check_real("max_gain", max_gain, gt=0)
    noise_by = check_choice("noise_by", noise_by, ("gap", "substep"))
    B, event, dev = x.shape[0], tuple(x.shape[1:]), x.device
    masks, calls = _firing(plan, source)
    runs = _block_runs(plan, masks, source, x, noise_by)
    nfe_so_far = np.zeros(B, dtype=np.int64)
    fallbacks = torch.zeros(B, dtype=torch.long, device=dev)
    n_passes, n_blocks = 0, len(plan)
    for b, (blk, run) in enumerate(
        tqdm(zip(plan, runs), total=n_blocks, disable=not progress, desc="diffusion")
    ):
        t0 = blk.timesteps[0]
        where = _where(b, n_blocks, t0)
        b0 = drift_fn(x, torch.full((B,), t0, dtype=torch.long, device=dev), where)
        n_passes += 1
        gain = torch.zeros(B, dtype=x.dtype, device=dev) if max_gain is not None else None
        drift = _midpoint_drift(drift_fn, run, where, x, b0, gain)
        x_new, info = pmm_step(drift, x, b0, run.noise, run.fired, run.chain, run.weights)
        n_passes += info.n_evals > 0
        if gain is not None and info.n_evals > 0:
            refused = gain > max_gain
            x_new = torch.where(refused.view((-1,) + (1,) * len(event)), info.endpoint, x_new)
            fallbacks += refused
        net.check_state(x_new, where)
        if callback is not None:
            nfe_so_far += calls[b]
            callback(x_new, t0, drift_fn.predict_x0(x, b0, t0), torch.as_tensor(nfe_so_far.copy()))
        x = x_new
    net.raise_if_bad()
    return DiffusionOutput(
        samples=x,
        nfe=torch.as_tensor(calls.sum(axis=0)),
        n_passes=n_passes,
        blocks=tuple(blk.chain.K for blk in plan),
        fallbacks=fallbacks.cpu(),
    )


def _midpoint_drift(
    drift_fn: _EpsDrift,
    run: _BlockRun,
    where: str,
    x: torch.Tensor,
    b0: torch.Tensor,
    gain: torch.Tensor | None,
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """The core's ``drift(points, groups)`` for one block: each point at its own timestep."""

    def drift(points: torch.Tensor, groups: Any) -> torch.Tensor:
        t = torch.cat([run.times(i, idx) for i, idx in groups])
        out = drift_fn(points, t, where + run.label)
        if gain is not None:
            _record_gain(gain, points, out, x, b0, groups, run.weights)
        return out

    return drift


def _record_gain(
    gain: torch.Tensor,
    points: torch.Tensor,
    out: torch.Tensor,
    x: torch.Tensor,
    b0: torch.Tensor,
    groups: Any,
    weights: Sequence[Any],
) -> None:
    """``gain[m] = max(gain[m], |w_i| ||b_i - b_0|| / ||x_i - x||)`` over the fired midpoints."""
    idx = torch.cat([members for _, members in groups]) if len(groups) > 1 else groups[0][1]
    w = torch.cat(
        [
            weights[i][members].flatten()
            if torch.is_tensor(weights[i])
            else torch.full((members.shape[0],), float(weights[i]), dtype=x.dtype, device=x.device)
            for i, members in groups
        ]
    )
    db = (out - b0[idx]).flatten(1).norm(dim=1)
    dx = (points - x[idx]).flatten(1).norm(dim=1)
    g = w.abs() * db / dx.clamp_min(torch.finfo(dx.dtype).tiny)
    gain.scatter_reduce_(0, idx, g, "amax")  # gains are >= 0: the max over repeats


def sample_ancestral(
    model: Network | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    plan: Sequence[Block],
    source: RandomSource,
    schedule: DDPMSchedule,
    *,
    callback: Callback | None = None,
    progress: bool = False,
) -> DiffusionOutput:
    """DDPM and DDIM: one network call per step of a plan of one-step blocks.

    ``plan`` is :func:`~pmm_pymc.diffusion.layout.plan_blocks` over
    :func:`~pmm_pymc.diffusion.layout.ddpm_coefficients` (ancestral DDPM) or
    :func:`~pmm_pymc.diffusion.layout.ddim_coefficients` (DDIM); each step
    ``x' = a x + g eps(x, t) + s z`` is a PMM block of one sub-step, where nothing can
    fire, so both run through the same core update. ``sample_ddpm`` and
    ``sample_ddim`` are this function.
    """
    if any(blk.chain.K != 1 for blk in plan):
        raise ValueError("DDPM and DDIM run a plan of one-step blocks (blocks=(1,) * steps)")
    return sample_pmm(model, x, plan, source, schedule, callback=callback, progress=progress)


sample_ddpm = sample_ancestral
sample_ddim = sample_ancestral


def sample_dpmsolver(
    model: Network | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    schedule: DDPMSchedule,
    grid: Sequence[int],
    *,
    callback: Callback | None = None,
    progress: bool = False,
) -> DiffusionOutput:
    """DPM-Solver++(2M), data prediction, midpoint form, as diffusers' multistep scheduler.

    ``grid`` is the descending timesteps of the network calls
    (:func:`~pmm_pymc.diffusion.layout.dpmsolver_grid` gives diffusers' own);
    the last step goes from ``grid[-1]`` to the clean end.

    diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, final_sigmas_type="zero")`` given these timesteps: first
    order on the first step (no previous x0 yet), a final step to sigma = 0
    (its first-order update is the predicted x0), second order on every other
    step. (diffusers' ``lower_order_final`` below 15 steps lowers only the last
    step, already first order here, and third order to second on the one
    before.)
    """
    net = _as_network(model, x)
    B, dev = x.shape[0], x.device
    S = len(grid)
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
        where = _where(k, S, t)
        eps = net(x, torch.full((B,), t, dtype=torch.long, device=dev), where)
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
        net.check_state(x_new, where)
        x = x_new
        if callback is not None:
            callback(x, t, x0, torch.full((B,), k + 1, dtype=torch.long))
    net.raise_if_bad()
    return DiffusionOutput(
        samples=x,
        nfe=torch.full((B,), S, dtype=torch.long),
        n_passes=S,
        blocks=(1,) * S,
        fallbacks=torch.zeros(B, dtype=torch.long),
    )


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
    parameterization: str = "auto",
    max_gain: float | None = DEFAULT_MAX_GAIN,
    noise_by: str = "gap",
    eta: float = 0.0,
    variance: str | None = None,
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
        list of ``blocks``; with a budget, ``min(T, 5 nfe)`` for
        ``parameterization="eps"`` and ``min(T, 1.25 nfe)`` for ``"x0"``,
        chosen on the digits64 and aniso64 testbeds). ``1 <= steps <= T``.
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
    parameterization : {"auto", "eps", "x0"}, default "auto"
        PMM: the drift frozen through a block, the predicted noise (the
        scheme as published) or the predicted clean sample
        ``(x - sigma_t eps) / alpha_t`` (the exponential integrator of the
        data-prediction SDE; :func:`pmm_pymc.diffusion.layout.x0_coefficients`).
        The fine chain is the same. ``"auto"``: ``"x0"`` (with variance
        ``"beta"`` and a ``1.25 nfe``-step chain) for an NFE budget below
        40, ``"eps"`` (posterior variance, ``5 nfe`` steps) otherwise and
        with ``K`` or a list of blocks; chosen on digits64 and aniso64,
        checked on mixture2d (docs/results-diffusion.md).
    max_gain : float or None, default 1.0
        PMM: the stability guard of :func:`sample_pmm`. A sample whose
        midpoint correction in a block amplifies its displacement by more
        than ``max_gain`` (a secant estimate made of the network's outputs at
        the fired midpoints against the block's start) takes the frozen-drift
        endpoint for that block; ``DiffusionOutput.fallbacks`` counts them.
        ``None`` turns the guard off.
    noise_by : {"gap", "substep"}, default "gap"
        PMM: draw one Gaussian per gap between a sample's fired midpoints
        (exact in distribution, a fraction of the work) or one per sub-step
        of the fine chain (the draw order of a plain loop); see
        :func:`sample_pmm`.
    eta : float, default 0.0
        DDIM's noise: 0 is the deterministic sampler, 1 the ancestral one with
        the posterior variance.
    variance : {"beta_tilde", "beta"}, optional
        Noise variance of the ancestral steps (PMM and DDPM): the posterior
        ``tilde beta`` (diffusers' "fixed_small") or ``beta`` ("fixed_large").
        Default ``"beta"`` for PMM over the data-prediction chain (its
        frozen ``x0`` under-disperses with the posterior variance; the
        larger noise balances it, as measured), ``"beta_tilde"`` otherwise.
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
        ``samples``, per-sample ``nfe``, ``n_passes``, the ``blocks`` used
        and the guard's per-sample ``fallbacks``.

    Warns
    -----
    RuntimeWarning
        With the guard off (``max_gain=None``) and ``parameterization="eps"``,
        when a PMM block is stiffer
        than 1 (:func:`block_stiffness`): such layouts diverged or
        over-dispersed on the digits64 testbed.

    Raises
    ------
    ValueError
        Unknown method, schedule, spacing or variance; ``steps``, ``K`` or
        ``blocks`` out of range; a shape, device or dtype mismatch; a model
        output of the wrong shape; a starting noise ``x_T`` with NaN or inf.
    FloatingPointError
        The model returned NaN or inf, or the state became NaN or inf (the
        message names the step and timestep). On the CPU the run stops at
        once; on an accelerator the check is made once after the loop, to
        avoid synchronising every step.

    Notes
    -----
    The random numbers are drawn in this order from each generator: ``x_T``
    (when a shape is given), PMM's uniforms for all its Bernoullis (the only
    host transfer, before the loop), then the Gaussians sub-step by sub-step
    (``noise_by="substep"``, and the other methods) or, for PMM by default,
    gap by gap (a member with a list of generators draws one per gap of its
    own, whatever the batch).
    """
    method = check_choice("method", method, METHODS)
    schedule = get_schedule(schedule)
    T = schedule.T
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model)!r}")
    if variance is not None:
        variance = check_choice("variance", variance, VARIANCES)
    spacing = check_choice("spacing", spacing, SPACINGS)
    data_var = check_real("data_var", data_var, gt=0)
    eta = check_real("eta", eta, ge=0)
    parameterization = check_choice(
        "parameterization", parameterization, ("auto", *PARAMETERIZATIONS)
    )
    if max_gain is not None:
        max_gain = check_real("max_gain", max_gain, gt=0)
    noise_by = check_choice("noise_by", noise_by, ("gap", "substep"))
    if method != "pmm" and (K is not None or blocks is not None or nfe is not None):
        raise ValueError(f"K, blocks and nfe are options of method='pmm', not {method!r}")
    steps, layout_of, parameterization = _chain_and_layout(
        method, T, steps, K, blocks, nfe, parameterization
    )
    if variance is None:  # PMM's data-prediction chain: beta (docs/results-diffusion.md)
        variance = "beta" if method == "pmm" and parameterization == "x0" else "beta_tilde"
    x, source, net = _start(model, x_T, generator, device, dtype)

    if method == "dpmsolver++":
        return sample_dpmsolver(
            net,
            x,
            schedule,
            dpmsolver_grid(T, steps, spacing),
            callback=callback,
            progress=progress,
        )
    grid = timestep_grid(T, steps, spacing)
    layout = layout_of(schedule, grid, data_var)
    if method == "ddim":
        plan = plan_blocks(
            schedule, grid, layout, lambda t, tp: ddim_coefficients(schedule, t, tp, eta)
        )
        return sample_ddim(net, x, plan, source, schedule, callback=callback, progress=progress)
    plan = plan_blocks(
        schedule,
        grid,
        layout,
        lambda t, tp: ddpm_coefficients(schedule, t, tp, variance),
        parameterization if method == "pmm" else "eps",
    )
    if method == "ddpm":
        return sample_ddpm(net, x, plan, source, schedule, callback=callback, progress=progress)
    if max_gain is None and parameterization == "eps" and max(layout) > 1:
        _warn_if_stiff(layout, schedule, grid, data_var)
    return sample_pmm(
        net,
        x,
        plan,
        source,
        schedule,
        max_gain=max_gain,
        noise_by=noise_by,
        callback=callback,
        progress=progress,
    )


def _chain_and_layout(
    method: str,
    T: int,
    steps: Any,
    K: Any,
    blocks: Any,
    nfe: Any,
    parameterization: str,
) -> tuple[int, Callable[[DDPMSchedule, np.ndarray, float], tuple[int, ...]], str]:
    """The chain length, the block layout as a function of the grid (checked up front), and
    PMM's parameterisation with ``"auto"`` resolved."""
    fixed = "eps" if parameterization == "auto" else parameterization
    one_step = lambda schedule, grid, data_var: (1,) * len(grid)  # noqa: E731
    if method != "pmm":
        steps = min(50, T) if steps is None else steps
        return check_int("steps", steps, 1, T), one_step, "eps"
    if K is not None and (blocks is not None or nfe is not None):
        raise ValueError("give K, or blocks and/or nfe, not both")
    if K is not None:
        steps = check_int("steps", T if steps is None else steps, 1, T)
        k = check_int("K", K, 1, steps)
        return steps, lambda schedule, grid, data_var: pmm_blocks(steps, K=k), fixed
    if blocks is not None and not isinstance(blocks, str):
        if nfe is not None:
            raise ValueError("give a list of blocks or an nfe budget, not both")
        if steps is None:
            try:
                steps = sum(int(k) for k in blocks)
            except (TypeError, ValueError) as err:
                raise TypeError(f"blocks must be a sequence of integers, got {blocks!r}") from err
        steps = check_int("steps", steps, 1, T)
        layout = validate_blocks(blocks, steps)
        return steps, lambda schedule, grid, data_var: layout, fixed
    policy = check_choice("blocks", DEFAULT_POLICY if blocks is None else blocks, BLOCK_POLICIES)
    budget = check_real("nfe", DEFAULT_NFE if nfe is None else nfe, ge=1)
    if parameterization == "auto":
        parameterization = "x0" if budget < X0_BELOW_NFE else "eps"
    if steps is None:
        steps = min(T, int(CHAIN_PER_NFE[parameterization] * budget))
    steps = check_int("steps", steps, 1, T)

    def layout(schedule: DDPMSchedule, grid: np.ndarray, data_var: float) -> tuple[int, ...]:
        return pmm_blocks(
            steps, nfe=budget, policy=policy, schedule=schedule, timesteps=grid, data_var=data_var
        )

    return steps, layout, parameterization


def _warn_if_stiff(
    layout: tuple[int, ...], schedule: DDPMSchedule, grid: np.ndarray, data_var: float
) -> None:
    stiff = float(block_stiffness(layout, schedule, grid, data_var).max())
    if stiff > MAX_STABLE_STIFFNESS:
        warnings.warn(
            f"PMM blocks reach stiffness {stiff:.2f} > {MAX_STABLE_STIFFNESS} (data_var="
            f"{data_var}) with the stability guard off (max_gain=None): such layouts diverged "
            "or over-dispersed on the digits64 testbed; keep the guard, spend more network "
            "evaluations (nfe >= 40 or so) or use 'dpmsolver++'",
            RuntimeWarning,
            stacklevel=4,  # past _warn_if_stiff, sample and the torch.no_grad wrapper
        )


def _start(
    model: Any,
    x_T: Any,
    generator: GeneratorArg,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, RandomSource, Network]:
    """The checked starting state, the random source and the checked network."""
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
    source = RandomSource(generator, shape[0], dev)
    if torch.is_tensor(x_T):
        bad = ~torch.isfinite(x_T)
        if bool(bad.any()):  # one host check before the loop, on any device
            rows = bad.flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"x_T has NaN or inf in {len(rows)} of its {shape[0]} samples (first: "
                f"{rows[:5]}); the starting noise must be finite"
            )
        x = x_T.to(state_dtype)
    else:
        x = source.randn(shape[1:], state_dtype)
    return x, source, Network(model, model_dtype, state_dtype, immediate_check=dev.type == "cpu")
