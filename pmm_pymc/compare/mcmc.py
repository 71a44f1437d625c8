"""Compare PyMC step methods on one model at an equal budget of gradient evaluations.

:func:`compare_samplers` runs every sampler with :func:`pymc.sample` from the same jittered
starting points, matches their post-tuning gradient evaluations (read from each step's
``n_steps`` statistic), and lays out ArviZ's diagnostics, and the error against reference draws
if given, in tidy tables (:class:`SamplerComparison`).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pymc as pm
import xarray as xr
from pymc.initial_point import make_initial_point_fns_per_chain
from pymc.step_methods.compound import BlockedStep, CompoundStep

from pmm_pymc._validate import check_bool, check_int, check_names
from pmm_pymc.compare.diagnostics import (
    SamplerComparison,
    fit_to_budget,
    gradient_evaluations,
)
from pmm_pymc.compare.diagnostics import tabulate_comparison as _tabulate

__all__ = ["SamplerComparison", "compare_samplers"]

Step = BlockedStep | CompoundStep
StepSpec = Step | type | Callable[[], Any] | list | tuple
Budget = Literal["gradients", "draws"] | int

#: Extra draws run beyond the pilot's estimate, so that the budget is reached before the
#: draws are cut back to it (the pilot's cost per draw is itself an estimate).
_BUDGET_MARGIN = 0.05
_JITTER_RETRIES = 10


# ----------------------------------------------------------------------------------------
# Validation: everything is checked before the first draw.
# ----------------------------------------------------------------------------------------


def _check_budget(budget: Any) -> Budget:
    if isinstance(budget, str):
        if budget not in ("gradients", "draws"):
            raise ValueError(
                f"budget must be 'gradients', 'draws' or a positive integer, got {budget!r}"
            )
        return budget  # type: ignore[return-value]
    return check_int("budget", budget, 1)


def _methods(step: Step) -> list[BlockedStep]:
    return list(step.methods) if isinstance(step, CompoundStep) else [step]


def _as_step(name: str, spec: Any, model: pm.Model) -> Step:
    """Build (factories) or check (instances) the step of one sampler, bound to ``model``."""
    what = (
        f"samplers[{name!r}] must be a PyMC step method bound to the model (e.g. "
        "pm.NUTS(model=model)), a step class (e.g. pmm_pymc.PoissonMidpoint), a callable "
        "returning a step (e.g. lambda: PoissonMidpoint(K=8)) or a list of steps"
    )
    built = spec
    if isinstance(spec, type):
        if not issubclass(spec, BlockedStep | CompoundStep):
            raise TypeError(f"{what}; got the class {spec.__qualname__}")
        with model:
            built = spec()
    elif not isinstance(spec, BlockedStep | CompoundStep | list | tuple) and callable(spec):
        with model:
            built = spec()
    if isinstance(built, list | tuple):
        if not built or not all(isinstance(s, BlockedStep) for s in built):
            raise TypeError(f"{what}; got a {type(built).__name__} holding {built!r}")
        built = CompoundStep(list(built))
    if not isinstance(built, BlockedStep | CompoundStep):
        raise TypeError(f"{what}; got {type(built).__name__}: {built!r}")
    model_vars = {id(v) for v in model.value_vars}
    for method in _methods(built):
        foreign = [v.name for v in getattr(method, "vars", []) if id(v) not in model_vars]
        if foreign:
            raise ValueError(
                f"samplers[{name!r}] ({type(method).__name__}) is bound to another model: its "
                f"variables {foreign} are not value variables of this model. Build the step "
                "inside `with model:` or pass a factory (the step class or a callable)."
            )
    return built


def _reports_gradients(step: Step) -> bool:
    names = set()
    for method in _methods(step):
        names.update(getattr(method, "stats_dtypes_shapes", {}) or {})
    # NUTS calls it ``tree_size``; PyMC renames it to ``n_steps`` in the DataTree.
    return bool(names & {"n_steps", "tree_size"})


def _check_var_names(model: pm.Model, var_names: Any, ref: xr.Dataset | None) -> list[str]:
    """The variables of the table: given ones (each in the posterior), or the default."""
    if var_names is None:
        names = [rv.name for rv in model.free_RVs]
        if ref is not None:
            names += [str(v) for v in ref.data_vars if str(v) not in names]
        return names
    # What pm.sample puts in the posterior: free variables and deterministics.
    valid = [rv.name for rv in model.free_RVs] + [v.name for v in model.deterministics]
    return check_names("var_names", var_names, valid, what="variable")


def _check_reference(model: pm.Model, reference: Any) -> xr.Dataset:
    from pmm_pymc.evaluation.posteriors import check_reference_matches

    check_reference_matches(model, reference)
    if isinstance(reference, xr.DataTree):
        return reference["posterior"].to_dataset()
    return reference


# ----------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------


def jittered_initvals(model: pm.Model, chains: int, seed: int | None) -> list[dict]:
    """One starting point per chain: the model's initial point jittered by U(-1, 1).

    The jitter is applied to the continuous free variables in their transformed space (as
    PyMC's ``jitter+adapt_diag`` does for NUTS); PyMC starts every chain of a user-given step
    at the same point otherwise, and R-hat then cannot detect a chain stuck near its start.
    A point with a non-finite log density is redrawn (up to 10 times).

    Parameters
    ----------
    model : pymc.Model
    chains : int
    seed : int, optional

    Returns
    -------
    list of dict
        Points keyed by value-variable name, for ``pm.sample(initvals=...)``.

    Raises
    ------
    ValueError
        If no finite point is found for a chain.
    """
    continuous = {id(v) for v in model.continuous_value_vars}
    jitter = {rv for rv in model.free_RVs if id(model.rvs_to_values[rv]) in continuous}
    fns = make_initial_point_fns_per_chain(
        model=model, overrides=None, jitter_rvs=jitter, chains=chains
    )
    logp = model.compile_logp()
    seeds = np.random.default_rng(seed).integers(2**31, size=(chains, _JITTER_RETRIES))
    points = []
    for chain, (fn, tries) in enumerate(zip(fns, seeds)):
        for attempt in tries:
            point = fn(int(attempt))
            if np.isfinite(logp(point)):
                points.append(point)
                break
        else:
            raise ValueError(
                f"no jittered starting point with a finite log density for chain {chain} "
                f"after {_JITTER_RETRIES} tries; check model.initial_point()"
            )
    return points


def _run(
    model: pm.Model,
    step: Step,
    *,
    draws: int,
    tune: int,
    initvals: list[dict],
    random_seed: Any,
    cores: int,
) -> tuple[xr.DataTree, float]:
    with warnings.catch_warnings():
        # Short pilot runs trigger PyMC's "only N samples" and convergence warnings.
        warnings.filterwarnings("ignore", message=".*samples per chain.*")
        start = time.perf_counter()
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=len(initvals),
            cores=cores,
            step=step,
            initvals=initvals,
            random_seed=random_seed,
            progressbar=False,
            quiet=True,
            compute_convergence_checks=False,
            model=model,
        )
        wall = time.perf_counter() - start
    return idata, wall


def _pilot_draws(draws: int) -> int:
    """Draws of a pilot run: a fifth of the draws, between 20 and 200."""
    return max(20, min(200, draws // 5))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="run", leave=False)


def compare_samplers(
    model: pm.Model,
    samplers: Mapping[str, StepSpec],
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int | None = None,
    reference: xr.DataTree | xr.Dataset | None = None,
    budget: Budget = "gradients",
    cores: int = 1,
    var_names: Iterable[str] | None = None,
    progressbar: bool = False,
) -> SamplerComparison:
    """Run several PyMC samplers on one model at an equal gradient budget and compare them.

    Parameters
    ----------
    model : pymc.Model
        The model; it needs at least one continuous free variable.
    samplers : mapping of str to step
        Name to sampler. A sampler is given as

        * a step class, e.g. ``PoissonMidpoint`` or ``pm.NUTS``: instantiated with no
          arguments inside ``with model:``;
        * a callable returning a step (or a list of steps), called inside ``with model:``,
          e.g. ``lambda: PoissonMidpoint(K=8)`` or ``functools.partial(pm.NUTS,
          target_accept=0.9)``; this is how to pass options;
        * a step instance already built on ``model`` (e.g. ``pm.NUTS(model=model)``), or a
          list of them (a compound step). An instance is reused for every run (the pilot
          and the main run); PyMC resets its tuning at the start of each.

        Variables a sampler does not cover (e.g. a discrete one next to a Langevin step) are
        assigned by PyMC as usual.
    draws : int, default 1000
        Draws per chain: of every sampler with ``budget="draws"``; of the first sampler with
        ``budget="gradients"``, whose cost sets the budget of the others.
    tune : int, default 1000
        Tuning iterations per chain (not counted in the budget).
    chains : int, default 4
        Chains per sampler. Every sampler starts its chains from the same jittered points
        (:func:`jittered_initvals`).
    random_seed : int, optional
        Seed of the starting points and of every :func:`pymc.sample` call.
    reference : xarray.DataTree or xarray.Dataset, optional
        Reference draws (e.g. :func:`pmm_pymc.evaluation.posteriors.load_reference`); checked
        against the model with
        :func:`pmm_pymc.evaluation.posteriors.check_reference_matches` before sampling.
    budget : {"gradients", "draws"} or int, default "gradients"
        ``"gradients"``: the first sampler runs ``draws`` draws and every other sampler gets
        the same post-tuning gradient evaluations per chain (e.g. LangevinMC about twice the
        draws of PoissonMidpoint). An integer: that many gradient evaluations per chain for
        every sampler. ``"draws"``: ``draws`` draws each, no matching. Gradient evaluations
        are read from each step's ``n_steps`` statistic (NUTS's tree size). A sampler's cost
        per draw is estimated by a pilot run (``tune`` tuning steps and a few draws on one
        chain), its main run is sized from it with a 5% margin, and its draws are then cut
        to the longest prefix whose mean cost per chain is within the budget; the summary's
        ``budget_ratio`` shows how close each sampler came.
    cores : int, default 1
        Passed to :func:`pymc.sample`. The default runs the chains one after the other, so
        that the wall times of the samplers compare.
    var_names : list of str, optional
        Variables in the table, each a free variable or a deterministic of the model;
        default the free variables and the reference's variables.
    progressbar : bool, default False
        Show a tqdm bar over the :func:`pymc.sample` runs.

    Returns
    -------
    SamplerComparison

    Raises
    ------
    TypeError
        If a sampler is not a step, a step class, a callable returning a step or a list of
        steps, or ``samplers`` is not a non-empty mapping of str.
    ValueError
        Before any sampling: ``draws`` or ``chains`` < 1, ``tune`` < 0, an invalid
        ``budget``, a model with no continuous free variable, a step bound to another model,
        a sampler that reports no gradient evaluations with a gradient budget, reference
        draws whose variable names or shapes do not match the model or that hold a NaN or
        infinite value (:func:`pmm_pymc.evaluation.posteriors.check_reference_matches`),
        ``var_names`` empty, a bare string, or naming a variable the posterior will not
        hold (every unknown name is refused, none is dropped), a negative ``random_seed``.

    Examples
    --------
    .. code-block:: python

        import pymc as pm
        from pmm_pymc import LangevinMC, PoissonMidpoint
        from pmm_pymc.compare import compare_samplers
        from pmm_pymc.evaluation.posteriors import load_model, load_reference

        model = load_model("eight_schools_noncentered")
        result = compare_samplers(
            model,
            {"PMM": PoissonMidpoint, "LMC": LangevinMC, "NUTS": pm.NUTS},
            draws=1000, tune=1000, chains=4, random_seed=1,
            reference=load_reference("eight_schools_noncentered"),
        )
        print(result.summary)
    """
    draws = check_int("draws", draws, 1)
    chains = check_int("chains", chains, 1)
    tune = check_int("tune", tune, 0)
    cores = check_int("cores", cores, 1)
    budget = _check_budget(budget)
    if random_seed is not None:
        random_seed = check_int("random_seed", random_seed, 0)
    progressbar = check_bool("progressbar", progressbar)
    if not isinstance(model, pm.Model):
        raise TypeError(f"model must be a pymc.Model, got {type(model).__name__}")
    if not model.continuous_value_vars:
        raise ValueError(
            "model has no continuous free variable to compare samplers on; its free variables "
            f"are {[v.name for v in model.value_vars] or 'none'}"
        )
    if not isinstance(samplers, Mapping) or not samplers:
        raise TypeError(f"samplers must be a non-empty mapping of name to step, got {samplers!r}")
    for name in samplers:
        if not isinstance(name, str):
            raise TypeError(f"sampler names must be str, got {type(name).__name__}: {name!r}")
    ref = _check_reference(model, reference) if reference is not None else None
    steps = {name: _as_step(name, spec, model) for name, spec in samplers.items()}
    if budget != "draws":
        silent = [name for name, step in steps.items() if not _reports_gradients(step)]
        if silent:
            raise ValueError(
                f"budget={budget!r} needs each sampler's gradient evaluations (an 'n_steps' "
                f"statistic), and {silent} report none; use budget='draws'"
            )
    names = _check_var_names(model, var_names, ref)
    initvals = jittered_initvals(model, chains, random_seed)

    # budget="gradients": the first sampler's cost sets the budget; an int sets it directly.
    fixed_budget = None if isinstance(budget, str) else float(budget)
    needs_pilot = [
        budget != "draws" and not (budget == "gradients" and i == 0) for i in range(len(steps))
    ]
    traces: dict[str, xr.DataTree] = {}
    walls: dict[str, float] = {}
    budget_per_chain = fixed_budget
    run = functools.partial(_run, model, random_seed=random_seed)
    with _progress(len(steps) + sum(needs_pilot), progressbar, "sampling") as bar:
        for (name, step), pilot in zip(steps.items(), needs_pilot):
            bar.set_postfix_str(name)
            n_draws = draws
            if pilot:
                # Cost per draw after tuning, from one chain; the main run gets a margin.
                trial, _ = run(
                    step, draws=_pilot_draws(draws), tune=tune, initvals=initvals[:1], cores=1
                )
                bar.update()
                per_draw = float(gradient_evaluations(trial["sample_stats"]).mean())
                n_draws = math.ceil(budget_per_chain / max(per_draw, 1e-12) * (1 + _BUDGET_MARGIN))
            idata, wall = run(step, draws=n_draws, tune=tune, initvals=initvals, cores=cores)
            bar.update()
            if budget != "draws":  # the first of budget="gradients" sets it, the others fit
                idata, budget_per_chain = fit_to_budget(idata, budget_per_chain)
            traces[name] = idata
            walls[name] = wall

    settings = {
        "samplers": list(steps),
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "random_seed": random_seed,
        "budget": budget,
        "cores": cores,
    }
    return _tabulate(traces, walls, names, ref, budget_per_chain, settings)
