"""The error-versus-cost frontier of the Langevin samplers on a posterior.

A Langevin sampler without a Metropolis correction trades bias for speed through its
step size: a larger step mixes in fewer gradients and is further from the posterior.
The frontier is that trade measured: for each sampler setting (a method, ``K``, a fixed
step or a ``target_accept``) one long run of many chains, *started at reference draws*
so that no burn-in transient is mixed into the bias, gives one point

* cost: gradient evaluations per effective sample (all gradients, midpoints included,
  over the smallest bulk ESS of any component, ArviZ's, through
  :func:`pmm_pymc.compare.diagnostics.variable_diagnostics`);
* bias: the worst absolute error of a posterior mean and the worst absolute error of a
  posterior sd against the reference, in reference sd
  (:func:`pmm_pymc.compare.diagnostics.reference_errors`);
* floor: the error that Monte-Carlo noise alone would give, from the run's and the
  reference's Monte-Carlo standard errors (:func:`noise_floor`). A measured error below
  its floor is noise, and says only that the bias is below the floor.

:func:`frontier` measures the points of a list of :class:`FrontierSetting` with
:func:`pmm_pymc.mcmc.chains.sample_chains`, :func:`measure_run` measures any other run
with ``n_steps`` stats (NUTS, nutpie), and :func:`cost_to_reach` interpolates each
sampler's curve to the cost of a given bias. Used by ``benchmarks/bench_frontier.py`` and
the demo (``examples/demo.py``).

Adding a sampler or a way of setting the step is adding a :class:`FrontierSetting`
(``method``, ``K``, ``step_size``, ``target_accept`` and ``extra`` keyword arguments of
:func:`~pmm_pymc.mcmc.chains.sample_chains`), or measuring any run with
:func:`measure_run` and appending its row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import arviz_stats as azs
import numpy as np
import pandas as pd
import pytensor
import xarray as xr
from scipy.stats import norm

from pmm_pymc._validate import check_int
from pmm_pymc.compare.diagnostics import (
    SAMPLE_DIMS,
    component_labels,
    gradient_evaluations,
    reference_errors,
    variable_diagnostics,
)

__all__ = [
    "BIAS_LEVELS",
    "FrontierSetting",
    "cost_to_reach",
    "frontier",
    "measure_run",
    "noise_floor",
    "nuts_point",
    "reference_noise",
    "reference_points",
    "where_pmm_wins",
]

BIAS_LEVELS = (0.1, 0.05, 0.02, 0.01)
"""Biases (reference sd) at which :func:`cost_to_reach` reports each sampler's cost."""

ERRORS = ("max_abs_mean_err", "max_abs_sd_err")
"""The two bias measures: worst |mean error| and worst |sd error|, in reference sd."""

FLOOR_LEVEL = 0.95
"""The floor is the ``FLOOR_LEVEL`` quantile of the worst error of pure noise."""


class FrontierSetting(NamedTuple):
    """One sampler setting, one point of the frontier.

    Attributes
    ----------
    sampler : str
        The curve the point belongs to (e.g. ``"PMM K=4"``); points of one sampler are
        joined in order of their step size.
    method : {"pmm", "lmc", "rmm"}
        :func:`~pmm_pymc.mcmc.chains.sample_chains`' method.
    K : int or None
    step_size : float or None
        A fixed step (not adapted), or None with ``target_accept``.
    target_accept : float or None
        Adapt the step to this would-be MALA acceptance during the warm-up.
    extra : mapping, optional
        More keyword arguments of ``sample_chains`` (another adaptation, say).
    """

    sampler: str
    method: str
    K: int | None = None
    step_size: float | None = None
    target_accept: float | None = None
    extra: Mapping[str, Any] | None = None

    @property
    def label(self) -> str:
        """How the step is set: ``"eta=0.1"``, ``"ta=0.9"``, or the ``extra`` options."""
        if self.step_size is not None:
            return f"eta={self.step_size:.3g}"
        if self.target_accept is not None:
            return f"ta={self.target_accept:g}"
        if self.extra:
            return ",".join(f"{k}={v}" for k, v in self.extra.items())
        return "adapted"


def reference_points(
    model: Any, reference: xr.DataTree | xr.Dataset, n: int, seed: int = 0
) -> np.ndarray:
    """``n`` reference draws (chosen at random) as raveled unconstrained points.

    The constrained reference values of every free variable are mapped through the model's
    transforms (the expression PyMC builds for initial points, fed the reference values),
    and raveled in the order of ``model.continuous_value_vars``: the ``initial_points`` of
    :func:`~pmm_pymc.mcmc.chains.sample_chains`.

    Parameters
    ----------
    model : pymc.Model
    reference : xarray.DataTree or xarray.Dataset
        Draws with dims ``chain`` and ``draw`` of every free variable (matched by name,
        and by position within a variable).
    n : int
        Number of points.
    seed : int, default 0

    Returns
    -------
    numpy.ndarray, shape (n, n_dim)
    """
    from pymc.blocking import DictToArrayBijection
    from pymc.initial_point import make_initial_point_expression

    n = check_int("n", n, 1)
    ref = reference["posterior"].to_dataset() if isinstance(reference, xr.DataTree) else reference
    missing = [rv.name for rv in model.free_RVs if rv.name not in ref.data_vars]
    if missing:
        raise ValueError(f"the reference has no draws of the free variable(s) {missing}")
    placeholders = {rv: rv.type(name=rv.name) for rv in model.free_RVs}
    exprs = make_initial_point_expression(
        free_rvs=model.free_RVs,
        rvs_to_transforms=model.rvs_to_transforms,
        initval_strategies=placeholders,
        jitter_rvs=set(),
        return_transformed=True,
    )
    fn = pytensor.function(list(placeholders.values()), exprs, on_unused_input="ignore")
    names = [model.rvs_to_values[rv].name for rv in model.free_RVs]
    flat = {}
    for rv in model.free_RVs:
        da = ref[rv.name].stack(sample=SAMPLE_DIMS).transpose("sample", ...)
        flat[rv.name] = np.asarray(da.values)
    total = next(iter(flat.values())).shape[0]
    rows = np.random.default_rng(seed).choice(total, size=n, replace=n > total)
    value_vars = model.continuous_value_vars
    out = []
    for r in rows:
        args = [np.asarray(flat[rv.name][r], dtype=rv.dtype) for rv in model.free_RVs]
        values = dict(zip(names, fn(*args)))
        out.append(DictToArrayBijection.map({v.name: values[v.name] for v in value_vars}).data)
    return np.stack(out)


def _stat(ds: xr.Dataset, labels_from: xr.Dataset, names: Sequence[str]) -> np.ndarray:
    """An ArviZ statistic flattened in :func:`component_labels` order, all variables."""
    parts = []
    for var in names:
        like = labels_from[var]
        dims = [d for d in like.dims if d not in SAMPLE_DIMS]
        parts.append(np.asarray(ds[var].transpose(*dims).values, float).reshape(-1))
    return np.concatenate(parts)


def _mcse(posterior: xr.Dataset, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo standard errors of each component's mean and sd (ArviZ's)."""
    ds = posterior[list(names)]
    mean = _stat(azs.mcse(ds, method="mean"), ds, names)
    sd = _stat(azs.mcse(ds, method="sd"), ds, names)
    return mean, sd


def noise_floor(sigma: np.ndarray, level: float = FLOOR_LEVEL) -> float:
    """The ``level`` quantile of ``max_j |e_j|`` for independent ``e_j ~ N(0, sigma_j^2)``.

    Bounded above by taking every ``sigma_j`` as the largest: ``max(sigma) * z`` with
    ``(2 Phi(z) - 1)^p = level`` for ``p`` components. A worst error below this floor is
    what noise alone gives with probability ``level``.

    Parameters
    ----------
    sigma : numpy.ndarray
        The standard error of each component's error.
    level : float, default FLOOR_LEVEL

    Returns
    -------
    float
    """
    sigma = np.asarray(sigma, float)
    z = norm.ppf((1.0 + level ** (1.0 / sigma.size)) / 2.0)
    return float(np.max(sigma) * z)


def reference_noise(reference: xr.DataTree | xr.Dataset, names: Sequence[str]) -> pd.DataFrame:
    """The reference's own Monte-Carlo error of each component's mean and sd, in its sd.

    Parameters
    ----------
    reference : xarray.DataTree or xarray.Dataset
        Reference draws with dims ``chain`` and ``draw``.
    names : sequence of str
        The variables.

    Returns
    -------
    pandas.DataFrame
        Columns ``label``, ``mean`` and ``sd`` (standard errors over the reference sd).
    """
    ref = reference["posterior"].to_dataset() if isinstance(reference, xr.DataTree) else reference
    mean, sd = _mcse(ref, names)
    scale = np.concatenate(
        [np.asarray(ref[v].std(SAMPLE_DIMS, ddof=1).values, float).reshape(-1) for v in names]
    )
    labels = [lab for v in names for lab in component_labels(ref[v])]
    return pd.DataFrame({"label": labels, "mean": mean / scale, "sd": sd / scale})


def measure_run(
    idata: xr.DataTree,
    reference: xr.DataTree | xr.Dataset,
    *,
    var_names: Sequence[str] | None = None,
    ref_noise: pd.DataFrame | None = None,
) -> dict[str, float]:
    """One frontier point from a run: its bias, its cost, and the noise floor under them.

    Parameters
    ----------
    idata : xarray.DataTree
        A run with a ``posterior`` and an ``n_steps`` statistic in ``sample_stats``.
    reference : xarray.DataTree or xarray.Dataset
        Reference draws.
    var_names : sequence of str, optional
        Variables compared (default: all the reference's that the run has).
    ref_noise : pandas.DataFrame, optional
        :func:`reference_noise` of the reference, if already computed.

    Returns
    -------
    dict
        ``max_abs_mean_err``, ``max_abs_sd_err`` (reference sd), ``grad_per_ess`` (all
        gradient evaluations over the smallest bulk ESS), ``min_ess``, ``grad_evals``,
        ``mean_floor`` and ``sd_floor`` (:func:`noise_floor` of the run's and the
        reference's standard errors combined), ``step_size`` (mean over chains, NaN if
        not reported) and ``diverging`` (fraction of draws).
    """
    posterior = idata["posterior"].to_dataset()
    errs = reference_errors(posterior, reference, var_names=var_names)
    names = list(dict.fromkeys(errs["variable"]))
    if ref_noise is None:
        ref_noise = reference_noise(reference, names)
    stats = idata["sample_stats"].to_dataset()
    grads = float(gradient_evaluations(stats).sum())
    diag = variable_diagnostics(posterior, var_names=names)
    min_ess = float(diag["ess_bulk"].min())
    mcse_mean, mcse_sd = _mcse(posterior, names)
    ref_sd = errs["ref_sd"].to_numpy()
    sigma_mean = np.hypot(mcse_mean / ref_sd, ref_noise["mean"].to_numpy())
    sigma_sd = np.hypot(mcse_sd / ref_sd, ref_noise["sd"].to_numpy())
    step = stats["step_size"].mean().item() if "step_size" in stats else np.nan
    diverging = stats["diverging"].mean().item() if "diverging" in stats else np.nan
    return {
        "max_abs_mean_err": float(errs["mean_err"].abs().max()),
        "max_abs_sd_err": float(errs["sd_err"].abs().max()),
        "grad_per_ess": grads / min_ess,
        "min_ess": min_ess,
        "grad_evals": grads,
        "mean_floor": noise_floor(sigma_mean),
        "sd_floor": noise_floor(sigma_sd),
        "step_size": float(step),
        "diverging": float(diverging),
    }


def frontier(
    model: Any,
    reference: xr.DataTree | xr.Dataset,
    settings: Sequence[FrontierSetting],
    *,
    chains: int = 128,
    draws: int = 2000,
    tune: int = 300,
    random_seed: int = 0,
    var_names: Sequence[str] | None = None,
    start: str = "reference",
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Measure one frontier point per setting with :func:`~pmm_pymc.mcmc.chains.sample_chains`.

    Every run starts its ``chains`` chains at reference draws (:func:`reference_points`,
    the same draws for every setting), warms up ``tune`` iterations (the preconditioner,
    and the step when the setting has a ``target_accept``; a fixed step stays as set), and
    keeps ``draws`` draws per chain.

    Parameters
    ----------
    model : pymc.Model
    reference : xarray.DataTree or xarray.Dataset
        Reference draws of every free variable.
    settings : sequence of FrontierSetting
    chains, draws, tune : int
    random_seed : int, default 0
        The starts and every run's seed derive from it.
    var_names : sequence of str, optional
        Variables compared (default: all the reference's that the runs have).
    start : {"reference", "jitter"}, default "reference"
        Start at reference draws, or (for a reference without draws of every free
        variable) at sample_chains' jittered initial points, when ``tune`` must be long
        enough to forget them.
    progress : callable, optional
        Called with one line per finished point (``print``, say).

    Returns
    -------
    pandas.DataFrame
        One row per setting: ``sampler``, ``method``, ``K``, ``setting`` (its label),
        ``adapted`` (the step was adapted, not fixed), ``target_accept``, the columns of
        :func:`measure_run`, ``seconds``.
    """
    import time

    from pmm_pymc.mcmc.chains import reuse_compiled, sample_chains

    chains = check_int("chains", chains, 1)
    draws = check_int("draws", draws, 1)
    tune = check_int("tune", tune, 0)
    if not settings:
        raise ValueError("settings is empty: give at least one FrontierSetting")
    for s in settings:
        if (s.step_size is None) == (s.target_accept is None) and not s.extra:
            raise ValueError(
                f"setting {s!r} needs exactly one of step_size and target_accept (or extra)"
            )
    if start not in ("reference", "jitter"):
        raise ValueError(f"start must be 'reference' or 'jitter', got {start!r}")
    points = (
        reference_points(model, reference, chains, random_seed) if start == "reference" else None
    )
    ref_noise = None
    rows = []
    with reuse_compiled():  # one compilation for all the settings
        for k, s in enumerate(settings):
            t0 = time.perf_counter()
            kwargs: dict[str, Any] = {
                "method": s.method,
                "K": s.K,
                "step_size": s.step_size,
                "adapt_step_size": s.step_size is None,
                "target_accept": s.target_accept,
                **dict(s.extra or {}),
            }
            idata = sample_chains(
                model,
                chains=chains,
                draws=draws,
                tune=tune,
                initial_points=points,
                random_seed=random_seed + 1 + k,
                compute_convergence_checks=False,
                **kwargs,
            )
            if ref_noise is None:
                names = list(
                    dict.fromkeys(
                        reference_errors(
                            idata["posterior"].to_dataset(), reference, var_names=var_names
                        )["variable"]
                    )
                )
                ref_noise = reference_noise(reference, names)
            row = {
                "sampler": s.sampler,
                "method": s.method,
                "K": s.K,
                "setting": s.label,
                "adapted": s.step_size is None,
                "target_accept": s.target_accept,
                **measure_run(idata, reference, var_names=var_names, ref_noise=ref_noise),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            if progress is not None:
                progress(
                    f"  {s.sampler:<10} {s.label:<12} step {row['step_size']:.3g}  "
                    f"grad/ESS {row['grad_per_ess']:8.1f}  mean err {row['max_abs_mean_err']:.3f} "
                    f"(floor {row['mean_floor']:.3f})  sd err {row['max_abs_sd_err']:.3f} "
                    f"(floor {row['sd_floor']:.3f})  div {row['diverging']:.3f}  "
                    f"{row['seconds']:.1f}s"
                )
    return pd.DataFrame(rows)


def nuts_point(
    model: Any,
    reference: xr.DataTree | xr.Dataset,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int = 0,
    sampler: str = "NUTS",
    var_names: Sequence[str] | None = None,
    **sample_kwargs: Any,
) -> dict[str, Any]:
    """The unbiased point of the frontier: ``pm.sample``'s NUTS, measured by :func:`measure_run`.

    Parameters
    ----------
    model : pymc.Model
    reference : xarray.DataTree or xarray.Dataset
    draws, tune, chains, random_seed
        As for :func:`pymc.sample` (one core).
    sampler : str, default "NUTS"
        The row's name.
    var_names : sequence of str, optional
    **sample_kwargs
        More :func:`pymc.sample` arguments; ``nuts_sampler`` defaults to ``"pymc"``
        (``"nutpie"``, say, for nutpie).

    Returns
    -------
    dict
        A frontier row (``step_size`` NaN: a single point, not a curve).
    """
    import time
    import warnings

    import pymc as pm

    t0 = time.perf_counter()
    # PyMC's own NUTS unless asked otherwise (pm.sample picks nutpie when it is installed).
    sample_kwargs.setdefault("nuts_sampler", "pymc")
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            cores=1,
            random_seed=random_seed,
            progressbar=False,
            compute_convergence_checks=False,
            **sample_kwargs,
        )
    row = measure_run(idata, reference, var_names=var_names)
    row.update(step_size=np.nan, seconds=time.perf_counter() - t0)
    return {"sampler": sampler, "method": "nuts", "K": None, "setting": "default"} | {
        "target_accept": np.nan,
        **row,
    }


def _crossing(curve: pd.DataFrame, error: str, level: float) -> tuple[float, str]:
    """The cost at which one sampler's curve (ordered by step) reaches ``level``.

    A point is *beyond* the level when its error exceeds both the level and its noise floor
    (a resolved bias), *within* it when its error is at most the level and the level is at
    least its floor, and *unresolved* otherwise (the level is under the floor and the error
    is noise). The bias grows with the step, so the curve is read from its large-step end,
    where biases are resolved best: the cost is interpolated (log-log in error and cost)
    between the largest step within the level and the next larger step beyond it; a small
    step beyond the level below a larger one within it is taken for noise (at a 95 % floor
    one point in twenty is beyond it by chance).
    """
    err = curve[error].to_numpy()
    cost = curve["grad_per_ess"].to_numpy()
    floor = curve[error.replace("max_abs_", "").replace("_err", "_floor")].to_numpy()
    beyond = err > np.maximum(level, floor)
    within = (err <= level) & (level >= floor)
    if not within.any():
        return np.nan, "not reached" if beyond.all() else "below floor"
    lo = int(np.flatnonzero(within)[-1])  # the largest step within the level
    above = np.flatnonzero(beyond[lo + 1 :])
    if above.size == 0:
        return float(cost[lo]), "<="  # no larger step is resolved beyond the level
    hi = lo + 1 + int(above[0])
    t = (np.log(level) - np.log(max(err[lo], 1e-12))) / (
        np.log(err[hi]) - np.log(max(err[lo], 1e-12))
    )
    t = float(np.clip(t, 0.0, 1.0))
    return float(np.exp(np.log(cost[lo]) + t * (np.log(cost[hi]) - np.log(cost[lo])))), ""


def cost_to_reach(
    table: pd.DataFrame, levels: Sequence[float] = BIAS_LEVELS, error: str = "max_abs_mean_err"
) -> pd.DataFrame:
    """Gradients per ESS each sampler needs to reach each bias level, from its curve.

    Each sampler's points are ordered by step size; the cost at a level is interpolated
    (log-log) between the largest step within the level and the next larger one resolved
    beyond it. ``"not reached"`` where no point is within it; ``"<="`` where every point
    is (the cheapest measured point is an upper bound); ``"below floor"`` (cost NaN) where
    the level is under the noise floor of every point within it, so the measured errors
    cannot tell whether it is reached. An unbiased sampler (NUTS: a single point) costs its
    own grad/ESS at every level its error is within.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`frontier` rows (and :func:`measure_run` rows with a ``sampler`` column).
    levels : sequence of float
    error : {"max_abs_mean_err", "max_abs_sd_err"}

    Returns
    -------
    pandas.DataFrame
        One row per sampler; per level a column ``level`` (the cost, NaN if none) and a
        column ``note@level``.
    """
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
    rows = []
    for sampler, curve in table.groupby("sampler", sort=False):
        curve = curve.sort_values("step_size")
        row: dict[str, Any] = {"sampler": sampler}
        for level in levels:
            row[level], row[f"note@{level}"] = _crossing(curve, error, level)
        rows.append(row)
    return pd.DataFrame(rows)


def where_pmm_wins(reach: pd.DataFrame, baseline: str = "LMC", error_name: str = "bias") -> str:
    """One line: the ratio of each PMM sampler's cost to the baseline's, per bias level.

    Parameters
    ----------
    reach : pandas.DataFrame
        :func:`cost_to_reach`'s table.
    baseline : str, default "LMC"
        The sampler to compare with.
    error_name : str
        What the levels measure, for the text.

    Returns
    -------
    str
    """
    levels = [c for c in reach.columns if not isinstance(c, str)]
    base = reach.set_index("sampler").loc[baseline]
    wins, losses, unknown = [], [], []
    for _, row in reach.iterrows():
        if not str(row["sampler"]).startswith("PMM"):
            continue
        for level in levels:
            pmm, lmc = row[level], base[level]
            tag = f"{row['sampler']} at {level:g}"
            pmm_note, lmc_note = row[f"note@{level}"], base[f"note@{level}"]
            # "<=" is an upper bound: it decides only against a cost above it.
            bound_unsure = (pmm_note == "<=" and not (lmc_note == "" and pmm <= lmc)) or (
                lmc_note == "<=" and not (pmm_note == "" and lmc <= pmm)
            )
            if (
                (np.isnan(pmm) and np.isnan(lmc))
                or "below floor" in (pmm_note, lmc_note)
                or bound_unsure
            ):
                unknown.append(tag)
            elif np.isnan(lmc) or (not np.isnan(pmm) and pmm < lmc):
                ratio = "LMC not reached" if np.isnan(lmc) else f"{pmm / lmc:.2f}x"
                wins.append(f"{tag} ({ratio})")
            else:
                ratio = "PMM not reached" if np.isnan(pmm) else f"{pmm / lmc:.2f}x"
                losses.append(f"{tag} ({ratio})")
    parts = [
        f"PMM cheaper than {baseline} ({error_name}): " + (", ".join(wins) or "nowhere"),
        "dearer: " + (", ".join(losses) or "nowhere"),
    ]
    if unknown:
        parts.append(
            "not resolved (under the noise floor, neither reached, or both within it at every "
            "measured step): " + ", ".join(unknown)
        )
    return "; ".join(parts)
