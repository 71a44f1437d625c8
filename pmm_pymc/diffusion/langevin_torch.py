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
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from pmm_pymc._validate import check_int, check_real
from pmm_pymc.core import fired_from_mask, langevin_chain, pmm_step
from pmm_pymc.diffusion.noise import GeneratorArg, LazyNoise, RandomSource

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["LangevinOutput", "check_log_density", "sample_langevin"]


class LangevinOutput(NamedTuple):
    """Result of :func:`sample_langevin`.

    Attributes
    ----------
    samples : torch.Tensor, shape (n_kept, B, *event)
        The states after every ``thin``-th step (the start is not included). A chain that
        diverged stays at its last finite state from then on (see ``diverging``).
    nfe : torch.Tensor, shape (B,), int64
        Gradient evaluations per chain (one per step, plus the fired midpoints).
    x : torch.Tensor, shape (B, *event)
        The final states, to continue from.
    n_steps : torch.Tensor, shape (n_kept, B), int64, on the CPU
        Gradient evaluations spent on each kept draw (the ``thin`` steps that led to it,
        midpoints included); the name is the sampler statistic of the PyMC steps.
    diverging : torch.Tensor, shape (n_kept, B), bool, on the CPU
        True at the draw in which the chain went non-finite. The chain is frozen there: it
        has at most one divergence, and ``diverging.sum(0)`` is the per-chain count.
    step_size : float
        The step size of the run (``h`` of LMC, the block step of PMM).
    method : str
        ``"pmm"`` or ``"lmc"``.
    K : int
        PMM sub-steps per step (1 for LMC).
    """

    samples: torch.Tensor
    nfe: torch.Tensor
    x: torch.Tensor
    n_steps: torch.Tensor
    diverging: torch.Tensor
    step_size: float
    method: str
    K: int

    def to_datatree(
        self,
        var_name: str = "x",
        *,
        dims: Sequence[str] | None = None,
        coords: Mapping[str, Any] | None = None,
    ) -> xr.DataTree:
        """The draws as an ArviZ DataTree, numpy on the host whatever the device.

        Parameters
        ----------
        var_name : str, default "x"
            Name of the sampled variable in the ``posterior`` group.
        dims : sequence of str, optional
            Names of the event dims (one per dim of ``samples`` after the chain dim);
            default ArviZ's ``{var_name}_dim_{i}``.
        coords : mapping, optional
            Coordinate values of the event dims.

        Returns
        -------
        xarray.DataTree
            ``posterior``: ``var_name`` with dims ``(chain, draw, *dims)``.
            ``sample_stats``: ``n_steps`` (gradient evaluations per draw, midpoints
            included), ``diverging`` (bool) and ``step_size``, each ``(chain, draw)``.
            Attributes ``method``, ``K`` and ``step_size`` on both groups.

        Raises
        ------
        ValueError
            If ``dims`` does not name every event dim, or ``var_name`` is not a non-empty
            string.
        """
        from arviz_base import from_dict

        if not isinstance(var_name, str) or not var_name:
            raise ValueError(f"var_name must be a non-empty string, got {var_name!r}")
        event_ndim = self.samples.ndim - 2
        if dims is not None:
            dims = [str(d) for d in dims] if not isinstance(dims, str) else [dims]
            if len(dims) != event_ndim:
                raise ValueError(
                    f"dims must name the {event_ndim} event dim(s) of samples of shape "
                    f"{tuple(self.samples.shape)} (after draw and chain), got {dims}"
                )
            clash = {"chain", "draw"} & set(dims)
            if clash:
                raise ValueError(f"dims may not use the sample dim names {sorted(clash)}")
        draws = self.samples.detach().cpu().numpy()
        draws = np.moveaxis(draws, 0, 1)  # (chain, draw, *event)
        n_steps = self.n_steps.detach().cpu().numpy().T
        diverging = self.diverging.detach().cpu().numpy().T
        attrs = {"method": self.method, "K": int(self.K), "step_size": float(self.step_size)}
        return from_dict(
            {
                "posterior": {var_name: draws},
                "sample_stats": {
                    "n_steps": n_steps.astype(np.int64),
                    "diverging": diverging.astype(bool),
                    "step_size": np.full(n_steps.shape, float(self.step_size)),
                },
            },
            dims={var_name: dims} if dims is not None else None,
            coords=dict(coords) if coords is not None else None,
            attrs={"posterior": attrs, "sample_stats": attrs},
        )


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
        chain, the final state ``x``, the gradient evaluations ``n_steps`` and
        the ``diverging`` flag of each draw; ``.to_datatree()`` gives the
        ArviZ DataTree.

    Raises
    ------
    ValueError, TypeError
        Before the first step: bad options, a non-finite ``x0``; at the first
        gradient: a ``log_prob`` that does not return one value per chain or a
        ``score`` of the wrong shape.

    Warns
    -----
    RuntimeWarning
        When chains went non-finite. Such a chain is frozen at its last finite
        state and flagged in ``diverging``; the other chains go on unaffected.
        The warning names the chains and whether the log-density (a NaN or inf
        gradient at a finite state) or the step (a runaway state) produced it.
    """
    grad = _gradient_fn(log_prob, score)
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.ndim < 1:
        raise TypeError("x0 must be a floating-point torch.Tensor of shape (B, *event)")
    if x0.shape[0] < 1:
        raise ValueError(f"x0 must hold at least one chain, got shape {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        bad = _bad_rows(x0).nonzero().flatten().tolist()
        raise ValueError(f"x0 must be finite; chains {bad} start at NaN or inf")
    if method not in ("pmm", "lmc"):
        raise ValueError(f"unknown method {method!r}; use 'pmm' or 'lmc'")
    step_size = check_real("step_size", step_size, gt=0)
    n_steps = check_int("n_steps", n_steps, 1)
    thin = check_int("thin", thin, 1)
    chunk = check_int("chunk", chunk, 1)
    K = 1 if method == "lmc" else check_int("K", K, 1)

    chain = langevin_chain(step_size, K)
    B, event = x0.shape[0], tuple(x0.shape[1:])
    x = x0.detach().clone()
    source = RandomSource(generator, B, x.device)
    nfe = np.zeros(B, dtype=np.int64)
    n_kept = n_steps // thin
    draw_nfe = np.zeros((n_kept, B), dtype=np.int64)  # gradient evaluations of each draw
    kept: list[torch.Tensor] = []
    p_fire = 1.0 / K
    # Divergence bookkeeping stays on the device (no host sync in the loop): the step at
    # which each chain went non-finite (-1: never) and whether a gradient it needed in that
    # step was already non-finite (the log-density's fault) or not (the step's).
    diverged_at = torch.full((B,), -1, dtype=torch.int64, device=x.device)
    grad_bad_at = torch.zeros(B, dtype=torch.bool, device=x.device)
    grad_bad = torch.zeros(B, dtype=torch.bool, device=x.device)
    huge = math.sqrt(torch.finfo(x.dtype).max)

    def drift(points: torch.Tensor, groups: Any) -> torch.Tensor:
        g = grad(points)
        members = torch.cat([idx for _, idx in groups]) if len(groups) > 1 else groups[0][1]
        hits = torch.zeros(B, dtype=torch.int32, device=g.device)
        grad_bad.logical_or_(hits.index_add_(0, members, _bad_rows(g).to(torch.int32)) > 0)
        return g

    fired_chunk: list[list[torch.Tensor | None]] = []
    for step in tqdm(range(n_steps), disable=not progress, desc=f"langevin[{method}]"):
        j = step % chunk
        if j == 0:
            n_here = min(chunk, n_steps - step)
            fired_chunk = []
            evals = np.ones((n_here, B), dtype=np.int64)  # per step: b0 and fired midpoints
            if K > 1:
                mask = source.uniforms(n_here * K).reshape(B, n_here, K) < p_fire
                mask[:, :, 0] = False
                evals += mask.sum(axis=2).T
                fired_chunk = [fired_from_mask(mask[:, s, :].T, like=x) for s in range(n_here)]
            nfe += evals.sum(axis=0)
            draw = (step + np.arange(n_here)) // thin
            in_draw = draw < n_kept
            np.add.at(draw_nfe, draw[in_draw], evals[in_draw])
        fired = fired_chunk[j] if K > 1 else [None]
        b0 = grad(x)
        if step == 0:
            _check_gradient(b0, x)
        grad_bad.copy_(_bad_rows(b0))
        noise = LazyNoise(source, event, x.dtype, chain.s)
        x_new, _ = pmm_step(drift, x, b0, noise, fired, chain)
        # A chain whose new state is not finite is frozen at its last finite state.
        alive = diverged_at < 0
        newly = alive & _bad_rows(x_new)
        diverged_at = torch.where(newly, step, diverged_at)
        # A gradient that overflowed at a runaway state (beyond sqrt of the dtype's largest
        # number) is the step's fault, not the log-density's.
        grad_bad_at |= newly & grad_bad & (_abs_max(x) < huge)
        keep = (alive & ~newly).view(B, *([1] * len(event)))
        x = torch.where(keep, x_new, x)
        if (step + 1) % thin == 0:
            kept.append(x)
        if callback is not None:
            callback(step, x)
    samples = torch.stack(kept) if kept else x.new_zeros((0, B, *event))
    diverging = np.zeros((n_kept, B), dtype=bool)
    at = diverged_at.cpu().numpy()
    for c in np.flatnonzero(at >= 0):
        if at[c] // thin < n_kept:
            diverging[at[c] // thin, c] = True
    if (at >= 0).any():
        _warn_divergences(at, grad_bad_at.cpu().numpy(), step_size, K, method, huge)
    return LangevinOutput(
        samples=samples,
        nfe=torch.as_tensor(nfe),
        x=x,
        n_steps=torch.as_tensor(draw_nfe),
        diverging=torch.as_tensor(diverging),
        step_size=step_size,
        method=method,
        K=K,
    )


def _bad_rows(t: torch.Tensor) -> torch.Tensor:
    """Per batch member: does it hold a NaN or an inf?"""
    return ~torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)


def _abs_max(t: torch.Tensor) -> torch.Tensor:
    """Per batch member: the largest absolute entry."""
    return t.abs().reshape(t.shape[0], -1).amax(dim=1)


def _warn_divergences(
    diverged_at: np.ndarray,
    grad_bad: np.ndarray,
    step_size: float,
    K: int,
    method: str,
    huge: float,
) -> None:
    """One warning naming the frozen chains and, for each, what produced the NaN or inf."""
    chains = np.flatnonzero(diverged_at >= 0)
    by_density = [int(c) for c in chains if grad_bad[c]]
    by_step = [int(c) for c in chains if not grad_bad[c]]
    parts = []
    if by_density:
        first = {c: int(diverged_at[c]) for c in by_density[:8]}
        parts.append(
            f"the log-density (its gradient was NaN or inf at a finite state) in chain(s) "
            f"{by_density} (chain: step {first}); check log_prob/score for a region where "
            "it is undefined or overflows"
        )
    if by_step:
        first = {c: int(diverged_at[c]) for c in by_step[:8]}
        parts.append(
            f"the step (the state ran away: finite gradients, or gradients that overflowed only "
            f"at a state beyond {huge:.3g}) in chain(s) {by_step} "
            f"(chain: step {first}); the step size is probably too large for the curvature "
            f"there (step_size={step_size}, method={method!r}, K={K})"
        )
    warnings.warn(
        f"sample_langevin: {len(chains)} of {diverged_at.size} chain(s) went non-finite and "
        "were frozen at their last finite state (flagged in `diverging`; the other chains are "
        "unaffected). The NaN or inf came from " + "; and from ".join(parts) + ".",
        RuntimeWarning,
        stacklevel=4,  # the caller of sample_langevin, past torch.no_grad's wrapper
    )


def check_log_density(
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None,
    x0: torch.Tensor,
    *,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Evaluate the gradient once at the starting points and check it, before any sampling.

    Parameters
    ----------
    log_prob : callable or None
        As for :func:`sample_langevin`.
    x0 : torch.Tensor, shape (B, *event)
        The starting points.
    score : callable, optional
        As for :func:`sample_langevin`.

    Returns
    -------
    torch.Tensor
        The gradient of the log-density at ``x0``.

    Raises
    ------
    TypeError
        If ``x0`` is not a floating-point tensor with a chain dim, or the callables are not
        callable.
    ValueError
        If ``log_prob`` does not return one value per chain, fails on ``x0`` (a wrong event
        shape, say), the gradient does not have the shape of ``x0``, or ``x0`` or the gradient
        there is not finite.
    """
    grad = _gradient_fn(log_prob, score)
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.ndim < 2:
        raise TypeError(
            "x0 must be a floating-point torch.Tensor of shape (chains, *event), got "
            + (f"shape {tuple(x0.shape)}" if torch.is_tensor(x0) else type(x0).__name__)
        )
    if not torch.isfinite(x0).all():
        bad = _bad_rows(x0).nonzero().flatten().tolist()
        raise ValueError(f"x0 must be finite; chains {bad} start at NaN or inf")
    what = "log_prob" if score is None else "score"
    try:
        with torch.no_grad():
            g = grad(x0.detach())
    except ValueError as err:
        if "one value per chain" in str(err):
            raise
        raise ValueError(f"{what} fails at x0 of shape {tuple(x0.shape)}: {err}") from err
    except (RuntimeError, IndexError, TypeError) as err:
        raise ValueError(f"{what} fails at x0 of shape {tuple(x0.shape)}: {err}") from err
    _check_gradient(g, x0)
    if not torch.isfinite(g).all():
        bad = _bad_rows(g).nonzero().flatten().tolist()
        raise ValueError(f"the gradient of the log-density is NaN or inf at x0 for chains {bad}")
    return g


def _check_gradient(g: torch.Tensor, x: torch.Tensor) -> None:
    if not torch.is_tensor(g) or g.shape != x.shape:
        shape = tuple(g.shape) if torch.is_tensor(g) else type(g)
        raise ValueError(f"the gradient must have the shape of x {tuple(x.shape)}, got {shape}")
