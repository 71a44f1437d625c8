"""PMM and Langevin Monte Carlo for any torch log-density, batched over chains.

:func:`sample_langevin` runs the Poisson Midpoint Method (or plain LMC) on an
energy-based model or any differentiable torch log-density, with gradients from
autograd. It calls the one PMM update of :mod:`pmm_pymc.core`.

Every Gaussian and Bernoulli comes from the caller's :class:`torch.Generator`, or
from a list of generators with one per batch member, through
:class:`pmm_pymc.diffusion.noise.RandomSource`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from pmm_pymc.core import fired_from_mask, langevin_chain, pmm_step
from pmm_pymc.diffusion.noise import GeneratorArg, LazyNoise, RandomSource

__all__ = ["LangevinOutput", "sample_langevin"]


class LangevinOutput(NamedTuple):
    """Result of :func:`sample_langevin`.

    Attributes
    ----------
    samples : torch.Tensor, shape (n_kept, B, *event)
        The states after every ``thin``-th step (the start is not included).
    nfe : torch.Tensor, shape (B,), int64
        Gradient evaluations per chain (one per step, plus the fired midpoints).
    x : torch.Tensor, shape (B, *event)
        The final states, to continue from.
    """

    samples: torch.Tensor
    nfe: torch.Tensor
    x: torch.Tensor


def _gradient_fn(
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None,
    score: Callable[[torch.Tensor], torch.Tensor] | None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    if (log_prob is None) == (score is None):
        raise ValueError("pass exactly one of log_prob and score")
    if score is not None:
        if not callable(score):
            raise TypeError(f"score must be callable, got {type(score)!r}")

        def grad_score(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return score(x)

        return grad_score
    if not callable(log_prob):
        raise TypeError(f"log_prob must be callable, got {type(log_prob)!r}")

    def grad_log_prob(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = log_prob(xg)
            if lp.shape != (x.shape[0],):
                raise ValueError(
                    f"log_prob must return one value per chain, shape ({x.shape[0]},), "
                    f"got {tuple(lp.shape)}"
                )
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        return grad.detach()

    return grad_log_prob


@torch.no_grad()
def sample_langevin(
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None,
    x0: torch.Tensor,
    *,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step_size: float,
    n_steps: int,
    method: str = "pmm",
    K: int = 8,
    thin: int = 1,
    generator: GeneratorArg = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
    chunk: int = 256,
) -> LangevinOutput:
    """Langevin sampling of ``pi ∝ exp(log_prob)`` with PMM or plain LMC.

    One step of ``method="lmc"`` is ``x' = x + h grad log pi(x) + sqrt(2 h) z``.
    One step of ``method="pmm"`` stands in for ``K`` LMC steps of size
    ``step_size / K``: it evaluates the gradient at ``x`` and, on average, at
    ``1 - 1/K`` random midpoints (:func:`pmm_pymc.core.pmm_step`). Runs under
    :func:`torch.no_grad`; only the gradient of ``log_prob`` uses autograd.

    Parameters
    ----------
    log_prob : callable or None
        ``log_prob(x) -> (B,)``, the unnormalised log-density of each chain,
        differentiable by autograd. Pass None and give ``score`` instead.
    x0 : torch.Tensor, shape (B, *event)
        Starting states, one chain per row, floating point.
    score : callable, optional
        ``score(x) -> grad log pi(x)`` of the shape of ``x``, when it is known
        in closed form (then no autograd is used).
    step_size : float
        ``h`` of LMC, or the block step of PMM (the sum of its ``K`` sub-steps).
    n_steps : int
        Number of steps (PMM blocks).
    method : {"pmm", "lmc"}, default "pmm"
    K : int, default 8
        PMM sub-steps per step; ignored by ``"lmc"``.
    thin : int, default 1
        Keep every ``thin``-th state.
    generator : torch.Generator or list of torch.Generator, optional
        Source of all random numbers; with one generator per chain the chain
        does not depend on the others.
    callback : callable, optional
        ``callback(step, x)`` after every step.
    progress : bool, default False
        Show a tqdm progress bar.
    chunk : int, default 256
        Steps whose Bernoulli firing patterns are drawn and moved to the host
        at once (the only host synchronisation, once per chunk).

    Returns
    -------
    LangevinOutput
        ``samples`` of shape ``(n_steps // thin, B, *event)``, ``nfe`` per
        chain and the final state ``x``.
    """
    grad = _gradient_fn(log_prob, score)
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.ndim < 1:
        raise TypeError("x0 must be a floating-point torch.Tensor of shape (B, *event)")
    if method not in ("pmm", "lmc"):
        raise ValueError(f"unknown method {method!r}; use 'pmm' or 'lmc'")
    if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    for name, val in (("n_steps", n_steps), ("thin", thin), ("chunk", chunk)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
    if method == "lmc":
        K = 1
    elif isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K!r}")

    chain = langevin_chain(step_size, K)
    B, event = x0.shape[0], tuple(x0.shape[1:])
    x = x0.detach().clone()
    source = RandomSource(generator, B, x.device)
    nfe = np.zeros(B, dtype=np.int64)
    kept: list[torch.Tensor] = []
    p_fire = 1.0 / K

    def drift(points: torch.Tensor, groups: Any) -> torch.Tensor:
        return grad(points)

    fired_chunk: list[list[torch.Tensor | None]] = []
    for step in tqdm(range(n_steps), disable=not progress, desc=f"langevin[{method}]"):
        j = step % chunk
        if j == 0:
            n_here = min(chunk, n_steps - step)
            fired_chunk = []
            if K > 1:
                mask = source.uniforms(n_here * K).reshape(B, n_here, K) < p_fire
                mask[:, :, 0] = False
                nfe += mask.sum(axis=(1, 2))
                fired_chunk = [fired_from_mask(mask[:, s, :].T, like=x) for s in range(n_here)]
        fired = fired_chunk[j] if K > 1 else [None]
        b0 = grad(x)
        if step == 0:
            _check_gradient(b0, x)
        noise = LazyNoise(source, event, x.dtype, chain.s)
        x, _ = pmm_step(drift, x, b0, noise, fired, chain)
        nfe += 1
        if (step + 1) % thin == 0:
            kept.append(x)
        if callback is not None:
            callback(step, x)
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            "sample_langevin produced non-finite states; the step size is probably too large "
            f"(step_size={step_size}, K={K})"
        )
    samples = torch.stack(kept) if kept else x.new_zeros((0, B, *event))
    return LangevinOutput(samples=samples, nfe=torch.as_tensor(nfe), x=x)


def _check_gradient(g: torch.Tensor, x: torch.Tensor) -> None:
    if not torch.is_tensor(g) or g.shape != x.shape:
        shape = tuple(g.shape) if torch.is_tensor(g) else type(g)
        raise ValueError(f"the gradient must have the shape of x {tuple(x.shape)}, got {shape}")
