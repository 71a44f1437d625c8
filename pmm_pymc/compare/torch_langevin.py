"""Compare PMM against LMC on a torch log-density at an equal budget of gradient evaluations.

The torch sibling of :func:`pmm_pymc.compare.compare_samplers`: :func:`compare_langevin` runs
:func:`pmm_pymc.diffusion.langevin_torch.sample_langevin` once per sampler setting from the same
starting points, matches their gradient evaluations after tuning (read from each draw's
``n_steps``, as for the PyMC steps) and returns the same :class:`SamplerComparison`, built by
the same code (:func:`pmm_pymc.compare.diagnostics.tabulate_comparison`): ArviZ's ESS, R-hat
and MCSE, ESS per 1000 gradients, wall time and the errors against reference draws or exact
moments. :func:`compare_target` does it for a bundled target of
:mod:`pmm_pymc.evaluation.torch_targets`.

Needs the ``torch`` extra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import xarray as xr

from pmm_pymc._validate import check_choice, check_int, check_real
from pmm_pymc.compare.diagnostics import (
    ExactMoments,
    SamplerComparison,
    fit_to_budget,
    tabulate_comparison,
)
from pmm_pymc.diffusion.langevin_torch import check_log_density, sample_langevin
from pmm_pymc.evaluation.torch_targets import TorchTarget, get_target

__all__ = [
    "LangevinSettings",
    "compare_langevin",
    "compare_target",
    "default_samplers",
    "target_reference",
]

Budget = Literal["gradients", "draws"] | int

#: Extra draws run beyond the expected cost, so that the budget is reached before the draws
#: are cut back to it (PMM's cost per draw is random); the same margin as the PyMC side's.
_BUDGET_MARGIN = 0.05
#: Exact draws of a target used for the Wasserstein distance (chains x draws).
_EXACT_DRAWS = (4, 5000)


class LangevinSettings(NamedTuple):
    """One sampler of a torch comparison: the options of :func:`sample_langevin`.

    Attributes
    ----------
    method : {"pmm", "lmc"}
    step_size : float
        ``h`` of LMC, or the block step of PMM (the sum of its ``K`` sub-steps).
    K : int, default 8
        PMM sub-steps per step (ignored by LMC).
    thin : int, default 1
        Steps per kept draw.
    """

    method: str
    step_size: float
    K: int = 8
    thin: int = 1

    def grad_per_draw(self) -> float:
        """Expected gradient evaluations per draw: ``thin`` steps of ``2 - 1/K`` (PMM) or 1."""
        per_step = 2.0 - 1.0 / self.K if self.method == "pmm" else 1.0
        return self.thin * per_step


def _as_settings(name: str, spec: Any) -> LangevinSettings:
    if isinstance(spec, Mapping):
        unknown = set(spec) - set(LangevinSettings._fields)
        if unknown:
            raise TypeError(
                f"samplers[{name!r}] has unknown option(s) {sorted(unknown)}; "
                f"valid: {', '.join(LangevinSettings._fields)}"
            )
        missing = {"method", "step_size"} - set(spec)
        if missing:
            raise TypeError(f"samplers[{name!r}] needs {sorted(missing)}")
        spec = LangevinSettings(**spec)
    if not isinstance(spec, LangevinSettings):
        raise TypeError(
            f"samplers[{name!r}] must be a LangevinSettings or a mapping such as "
            f"{{'method': 'pmm', 'step_size': 0.1, 'K': 8}}, got {type(spec).__name__}"
        )
    method = check_choice(f"samplers[{name!r}].method", spec.method, ("pmm", "lmc"))
    return LangevinSettings(
        method=method,
        step_size=check_real(f"samplers[{name!r}].step_size", spec.step_size, gt=0),
        K=1 if method == "lmc" else check_int(f"samplers[{name!r}].K", spec.K, 1),
        thin=check_int(f"samplers[{name!r}].thin", spec.thin, 1),
    )


def default_samplers(step_size: float, K: int = 8) -> dict[str, LangevinSettings]:
    """PMM against LMC at the same step, and LMC at half the step.

    At an equal gradient budget LMC takes about ``2 - 1/K`` times as many steps as PMM: at
    the same step it covers about twice the Langevin time (more ESS) with more bias; at half
    the step it covers the same time as PMM.

    Parameters
    ----------
    step_size : float
        PMM's block step and LMC's step.
    K : int, default 8

    Returns
    -------
    dict of str to LangevinSettings
        ``{"PMM": ..., "LMC": ..., "LMC-half": ...}``.
    """
    step_size = check_real("step_size", step_size, gt=0)
    return {
        "PMM": LangevinSettings("pmm", step_size, K=check_int("K", K, 1)),
        "LMC": LangevinSettings("lmc", step_size),
        "LMC-half": LangevinSettings("lmc", step_size / 2),
    }


def _check_budget(budget: Any) -> Budget:
    if isinstance(budget, str):
        return check_choice("budget", budget, ("gradients", "draws"))
    return check_int("budget", budget, 1)


def _check_reference(reference: Any, var_name: str, n_components: int) -> xr.Dataset | ExactMoments:
    if isinstance(reference, xr.DataTree):
        if "posterior" not in reference.children:
            raise ValueError("reference DataTree has no 'posterior' group")
        reference = reference["posterior"].to_dataset()
    if isinstance(reference, ExactMoments):
        parts = {"mean": reference.mean, "sd": reference.sd}
        if reference.draws is not None:
            parts["draws"] = reference.draws
    elif isinstance(reference, xr.Dataset):
        parts = {"draws": reference}
    else:
        raise TypeError(
            "reference must be reference draws (an xarray DataTree or Dataset) or "
            f"ExactMoments, got {type(reference).__name__}"
        )
    for part, ds in parts.items():
        if var_name not in ds.data_vars:
            raise ValueError(
                f"the reference {part} have no variable {var_name!r}; they have "
                f"{sorted(map(str, ds.data_vars))} (set var_name to the reference's name)"
            )
        values = np.asarray(ds[var_name].values, dtype=float)
        sample = [d for d in ds[var_name].dims if d in ("chain", "draw")]
        size = int(np.prod([ds[var_name].sizes[d] for d in ds[var_name].dims if d not in sample]))
        if size != n_components:
            raise ValueError(
                f"the reference {part} of {var_name!r} have {size} components per draw, the "
                f"starting points {n_components}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"the reference {part} of {var_name!r} hold NaN or inf")
    if isinstance(reference, ExactMoments) and (np.asarray(reference.sd[var_name]) <= 0).any():
        raise ValueError(f"the reference sd of {var_name!r} must be > 0")
    return reference


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(
    log_prob: Callable | None,
    score: Callable | None,
    x0: torch.Tensor,
    settings: LangevinSettings,
    *,
    draws: int,
    tune: int,
    seed: int,
    var_name: str,
    dims: Sequence[str] | None,
    coords: Mapping[str, Any] | None,
) -> tuple[xr.DataTree, float]:
    generator = torch.Generator(device=x0.device).manual_seed(seed)
    options = {"method": settings.method, "step_size": settings.step_size, "K": settings.K}
    _synchronize(x0.device)
    start = time.perf_counter()
    x = x0
    if tune > 0:  # kept: only the last state (thin = tune)
        x = sample_langevin(
            log_prob, x, score=score, n_steps=tune, thin=tune, generator=generator, **options
        ).x
    out = sample_langevin(
        log_prob,
        x,
        score=score,
        n_steps=draws * settings.thin,
        thin=settings.thin,
        generator=generator,
        **options,
    )
    _synchronize(x0.device)
    wall = time.perf_counter() - start
    return out.to_datatree(var_name, dims=dims, coords=coords), wall


def compare_langevin(
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None,
    x0: torch.Tensor,
    samplers: Mapping[str, LangevinSettings | Mapping[str, Any]],
    *,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    draws: int = 1000,
    tune: int = 1000,
    random_seed: int | None = None,
    reference: xr.DataTree | xr.Dataset | ExactMoments | None = None,
    budget: Budget = "gradients",
    var_name: str = "x",
    dims: Sequence[str] | None = None,
    coords: Mapping[str, Any] | None = None,
    progressbar: bool = False,
) -> SamplerComparison:
    """Run PMM and LMC settings on one torch log-density at an equal gradient budget.

    Parameters
    ----------
    log_prob : callable or None
        ``log_prob(x) -> (chains,)``, differentiable by autograd; or None with ``score``.
    x0 : torch.Tensor, shape (chains, *event)
        Starting points, one chain per row, on the device to sample on. Every sampler starts
        from them.
    samplers : mapping of str to LangevinSettings or mapping
        Name to the options of :func:`sample_langevin`: ``method`` ("pmm" or "lmc"),
        ``step_size``, ``K`` (PMM) and ``thin``. See :func:`default_samplers`.
    score : callable, optional
        ``score(x)``, the gradient in closed form, instead of ``log_prob``.
    draws : int, default 1000
        Draws per chain: of every sampler with ``budget="draws"``; of the first sampler with
        ``budget="gradients"``, whose cost sets the budget of the others.
    tune : int, default 1000
        Steps per chain run and discarded before the draws (not counted in the budget).
    random_seed : int, optional
        Seed of every sampler's generator (the same for all: common random numbers).
    reference : xarray.DataTree, xarray.Dataset or ExactMoments, optional
        Reference draws of ``var_name`` or the exact moments (see
        :func:`pmm_pymc.compare.diagnostics.reference_errors`); checked before sampling.
    budget : {"gradients", "draws"} or int, default "gradients"
        As for :func:`pmm_pymc.compare.compare_samplers`: gradient evaluations per chain after
        tuning are matched, read from each draw's ``n_steps``. A sampler's run is sized from
        its expected cost per draw (``LangevinSettings.grad_per_draw``) with a 5% margin and
        cut to the longest prefix whose mean cost per chain is within the budget.
    var_name : str, default "x"
        Name of the variable in the DataTrees (and in the reference).
    dims, coords : optional
        Names and coordinates of the event dims (:meth:`LangevinOutput.to_datatree`).
    progressbar : bool, default False
        A tqdm bar over the samplers.

    Returns
    -------
    SamplerComparison
        The same tables as :func:`pmm_pymc.compare.compare_samplers`.

    Raises
    ------
    TypeError, ValueError
        Before any sampling: bad options or sampler settings, ``x0`` without a chain dim or
        not finite, a ``log_prob`` that fails at ``x0`` or does not return one value per
        chain, a gradient of the wrong shape or not finite at ``x0``, a reference without
        ``var_name``, of another size or holding NaN.
    """
    draws = check_int("draws", draws, 1)
    tune = check_int("tune", tune, 0)
    budget = _check_budget(budget)
    if not isinstance(samplers, Mapping) or not samplers:
        raise TypeError(
            f"samplers must be a non-empty mapping of name to settings, got {samplers!r}"
        )
    for name in samplers:
        if not isinstance(name, str):
            raise TypeError(f"sampler names must be str, got {type(name).__name__}: {name!r}")
    settings = {name: _as_settings(name, spec) for name, spec in samplers.items()}
    if not isinstance(var_name, str) or not var_name:
        raise ValueError(f"var_name must be a non-empty string, got {var_name!r}")
    check_log_density(log_prob, x0, score=score)
    ref = (
        _check_reference(reference, var_name, int(np.prod(x0.shape[1:])))
        if reference is not None
        else None
    )
    seed = int(np.random.SeedSequence(random_seed).generate_state(1)[0])

    from tqdm.auto import tqdm

    traces: dict[str, xr.DataTree] = {}
    walls: dict[str, float] = {}
    budget_per_chain = None if isinstance(budget, str) else float(budget)
    run = {"tune": tune, "seed": seed, "var_name": var_name, "dims": dims, "coords": coords}
    for name, spec in tqdm(settings.items(), disable=not progressbar, desc="sampling", leave=False):
        n_draws = draws
        if budget_per_chain is not None and budget != "draws":
            n_draws = math.ceil(budget_per_chain / spec.grad_per_draw() * (1 + _BUDGET_MARGIN))
        dt, wall = _run(log_prob, score, x0, spec, draws=n_draws, **run)
        if budget != "draws":  # the first of budget="gradients" sets it, the others fit
            dt, budget_per_chain = fit_to_budget(dt, budget_per_chain)
        traces[name] = dt
        walls[name] = wall
    record = {
        "samplers": {name: s._asdict() for name, s in settings.items()},
        "draws": draws,
        "tune": tune,
        "chains": int(x0.shape[0]),
        "random_seed": random_seed,
        "budget": budget,
        "device": str(x0.device),
        "dtype": str(x0.dtype).removeprefix("torch."),
    }
    return tabulate_comparison(traces, walls, [var_name], ref, budget_per_chain, record)


def target_reference(target: TorchTarget, seed: int = 0) -> xr.Dataset | ExactMoments:
    """What a bundled target is judged against.

    Exact moments with exact draws (for the Wasserstein distance) where the target has them,
    else its reference draws.

    Parameters
    ----------
    target : TorchTarget
    seed : int, default 0
        Seed of the exact draws.

    Returns
    -------
    xarray.Dataset or ExactMoments
    """
    event_dims = list(target.dims)
    coords = dict(target.coords)

    def dataset(values: np.ndarray, sample_dims: list[str]) -> xr.Dataset:
        return xr.Dataset(
            {target.var_name: ([*sample_dims, *event_dims], np.asarray(values, dtype=float))},
            coords={k: v for k, v in coords.items() if k in event_dims},
        )

    if target.mean is None or target.sd is None:
        return dataset(target.reference_draws, ["chain", "draw"])
    draws = None
    if target.exact_sample is not None:
        chains, n = _EXACT_DRAWS
        flat = target.exact_sample(chains * n, torch.Generator().manual_seed(seed))
        draws = dataset(flat.numpy().reshape(chains, n, *target.event_shape), ["chain", "draw"])
    return ExactMoments(mean=dataset(target.mean, []), sd=dataset(target.sd, []), draws=draws)


def compare_target(
    target: str | TorchTarget,
    samplers: Mapping[str, LangevinSettings | Mapping[str, Any]] | None = None,
    *,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    random_seed: int | None = 0,
    budget: Budget = "gradients",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    use_score: bool = False,
    progressbar: bool = False,
) -> SamplerComparison:
    """:func:`compare_langevin` on a bundled target, from overdispersed starting points.

    Parameters
    ----------
    target : str or TorchTarget
        A name of :func:`pmm_pymc.evaluation.torch_targets.list_targets` or a target.
    samplers : mapping, optional
        Default :func:`default_samplers` at the target's default step size
        (:meth:`TorchTarget.default_step_size`) with ``K = 8``.
    chains : int, default 4
    draws, tune, random_seed, budget, progressbar
        As for :func:`compare_langevin`.
    device : torch.device or str, default "cpu"
    dtype : torch.dtype, default torch.float64
    use_score : bool, default False
        Use the target's closed-form score instead of autograd on ``log_prob``.

    Returns
    -------
    SamplerComparison
        With ``settings["target"]`` the target's name.
    """
    if not isinstance(target, TorchTarget):
        target = get_target(target)
    chains = check_int("chains", chains, 1)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
    if samplers is None:
        samplers = default_samplers(target.default_step_size())
    if use_score and target.score is None:
        raise ValueError(f"the {target.name!r} target has no closed-form score")
    x0 = target.initial_points(chains, random_seed, dtype=dtype, device=device)
    result = compare_langevin(
        None if use_score else target.log_prob,
        x0,
        samplers,
        score=target.score if use_score else None,
        draws=draws,
        tune=tune,
        random_seed=random_seed,
        reference=target_reference(target),
        budget=budget,
        var_name=target.var_name,
        dims=target.dims,
        coords=target.coords,
        progressbar=progressbar,
    )
    result.settings.update(target=target.name, description=target.description)
    return result
