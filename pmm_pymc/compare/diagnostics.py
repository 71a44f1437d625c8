"""Per-variable diagnostics of MCMC draws, from ArviZ, and their error against reference draws.

Every convergence diagnostic here is ArviZ's (``arviz_stats.ess``, ``rhat``, ``mcse``); this
module only lays them out as one tidy row per scalar component of each variable, divides the
effective sample sizes by the gradient evaluations that bought them, and compares the draws with
reference draws in units of the reference standard deviation.

The tables of a whole comparison (:class:`SamplerComparison`, :func:`tabulate_comparison`) and
the cutting of runs to a common gradient budget (:func:`draws_within_budget`, :func:`cut_draws`)
live here too, so that the PyMC comparison (:mod:`pmm_pymc.compare.mcmc`) and the torch one
(:mod:`pmm_pymc.compare.torch_langevin`) share them.

A reference is either reference draws or a target's exact moments (:class:`ExactMoments`).

Component order: a variable of shape ``(3, 2)`` has six components, flattened in C order over
its non-sample dims (as :meth:`xarray.DataArray.to_series` does), labelled ``name[i, j]`` with the
coordinate values. Reference draws are matched positionally, so the reference may use other
dim names than the model (posteriordb and PyMC often do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import arviz_stats as azs
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import wasserstein_distance

from pmm_pymc._validate import check_int

__all__ = [
    "SAMPLE_DIMS",
    "ExactMoments",
    "SamplerComparison",
    "component_labels",
    "cut_draws",
    "draws_within_budget",
    "error_curve",
    "fit_to_budget",
    "gradient_evaluations",
    "reference_errors",
    "tabulate_comparison",
    "variable_diagnostics",
]

SAMPLE_DIMS = ("chain", "draw")


class ExactMoments(NamedTuple):
    """A target's exact means and standard deviations, a reference without Monte-Carlo error.

    Attributes
    ----------
    mean, sd : xarray.Dataset
        One variable per sampled variable, with its event dims only (no ``chain``/``draw``).
    draws : xarray.Dataset, optional
        Exact independent draws (dims ``chain``, ``draw`` and the event dims), used only for
        the Wasserstein distance ``w1``; without them ``w1`` is NaN.
    """

    mean: xr.Dataset
    sd: xr.Dataset
    draws: xr.Dataset | None = None

    @property
    def data_vars(self) -> Any:
        """The variables covered, as :attr:`xarray.Dataset.data_vars`."""
        return self.mean.data_vars


def _event_dims(da: xr.DataArray) -> list[str]:
    return [d for d in da.dims if d not in SAMPLE_DIMS]


def _flat_draws(da: xr.DataArray) -> np.ndarray:
    """Draws of one variable as an array ``(chain, draw, n_components)``."""
    da = da.transpose(*SAMPLE_DIMS, ...)
    return np.asarray(da.values, dtype=float).reshape(da.sizes["chain"], da.sizes["draw"], -1)


def component_labels(da: xr.DataArray) -> list[str]:
    """Labels ``name[i, j]`` of the scalar components of a variable, in C order.

    Parameters
    ----------
    da : xarray.DataArray
        The variable, with or without the sample dims.

    Returns
    -------
    list of str
        ``[name]`` for a scalar variable.
    """
    dims = _event_dims(da)
    if not dims:
        return [str(da.name)]
    axes = [da.coords[d].values if d in da.coords else np.arange(da.sizes[d]) for d in dims]
    grids = np.meshgrid(*axes, indexing="ij")
    flat = [g.reshape(-1) for g in grids]
    return [f"{da.name}[{', '.join(str(f[i]) for f in flat)}]" for i in range(flat[0].size)]


def _flatten_stat(ds: xr.Dataset, var: str, like: xr.DataArray) -> np.ndarray:
    """One ArviZ result variable flattened in the component order of ``like``."""
    da = ds[var]
    return np.asarray(da.transpose(*_event_dims(like)).values, dtype=float).reshape(-1)


def gradient_evaluations(sample_stats: xr.Dataset) -> xr.DataArray:
    """Gradient evaluations of every draw, ``(chain, draw)``, from the ``n_steps`` stats.

    A compound step reports one ``n_steps`` per gradient-based method (PyMC prefixes
    duplicates, e.g. ``sampler_0__n_steps``); they are summed.

    Parameters
    ----------
    sample_stats : xarray.Dataset
        The ``sample_stats`` group of a PyMC run.

    Returns
    -------
    xarray.DataArray

    Raises
    ------
    ValueError
        If no ``n_steps`` statistic is present.
    """
    names = [n for n in sample_stats.data_vars if str(n) == "n_steps" or str(n).endswith("n_steps")]
    if not names:
        raise ValueError(
            "the sampler reports no 'n_steps' statistic (gradient evaluations per draw); "
            f"its statistics are {sorted(map(str, sample_stats.data_vars))}"
        )
    total = sum(sample_stats[n].astype(float) for n in names)
    return total.transpose(*SAMPLE_DIMS)


def variable_diagnostics(
    posterior: xr.Dataset,
    *,
    var_names: Sequence[str] | None = None,
    grad_evals: float | None = None,
) -> pd.DataFrame:
    """ArviZ diagnostics, one row per scalar component of each variable.

    Parameters
    ----------
    posterior : xarray.Dataset
        Draws with dims ``chain`` and ``draw``.
    var_names : sequence of str, optional
        Variables to report; default all.
    grad_evals : float, optional
        Gradient evaluations that produced the draws (all chains together); adds the
        columns ``ess_bulk_per_1k_grad`` and ``ess_tail_per_1k_grad``.

    Returns
    -------
    pandas.DataFrame
        Columns ``variable``, ``label``, ``mean``, ``sd``, ``ess_bulk``, ``ess_tail``,
        ``r_hat``, ``mcse_mean`` and, with ``grad_evals``, the ESS per 1000 gradient
        evaluations. ``ess_*`` from :func:`arviz_stats.ess` (methods ``"bulk"``,
        ``"tail"``), ``r_hat`` from :func:`arviz_stats.rhat` (rank-normalised split R-hat,
        NaN with a single chain), ``mcse_mean`` from :func:`arviz_stats.mcse`.
    """
    names = list(posterior.data_vars) if var_names is None else list(var_names)
    ds = posterior[names]
    ess_bulk = azs.ess(ds, method="bulk")
    ess_tail = azs.ess(ds, method="tail")
    r_hat = azs.rhat(ds)
    mcse_mean = azs.mcse(ds, method="mean")
    rows = []
    for var in names:
        da = ds[var]
        draws = _flat_draws(da).reshape(-1, _flat_draws(da).shape[-1])
        columns = {
            "label": component_labels(da),
            "mean": draws.mean(axis=0),
            "sd": draws.std(axis=0, ddof=1)
            if draws.shape[0] > 1
            else np.full(draws.shape[1], np.nan),
            "ess_bulk": _flatten_stat(ess_bulk, var, da),
            "ess_tail": _flatten_stat(ess_tail, var, da),
            "r_hat": _flatten_stat(r_hat, var, da),
            "mcse_mean": _flatten_stat(mcse_mean, var, da),
        }
        frame = pd.DataFrame(columns)
        frame.insert(0, "variable", str(var))
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    if grad_evals is not None:
        scale = 1000.0 / float(grad_evals) if grad_evals > 0 else np.nan
        table["ess_bulk_per_1k_grad"] = table["ess_bulk"] * scale
        table["ess_tail_per_1k_grad"] = table["ess_tail"] * scale
    return table


def _reference_dataset(reference: xr.DataTree | xr.Dataset) -> xr.Dataset:
    if isinstance(reference, xr.DataTree):
        return reference["posterior"].to_dataset()
    return reference


def reference_errors(
    posterior: xr.Dataset,
    reference: xr.DataTree | xr.Dataset,
    *,
    var_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Error of the draws' means, sds and marginals against reference draws.

    For each scalar component, with ``m, s`` the mean and sd (``ddof=1``) of all draws and
    ``m_ref, s_ref`` those of the reference draws:

    * ``mean_err = (m - m_ref) / s_ref``
    * ``sd_err = (s - s_ref) / s_ref``
    * ``w1 = W1(draws, reference draws) / s_ref``, the 1-D Wasserstein distance of the
      two empirical marginals (:func:`scipy.stats.wasserstein_distance`).

    All three are in units of the reference sd, so they compare across variables and
    posteriors. The Monte-Carlo error of the reference itself is not removed.

    Parameters
    ----------
    posterior : xarray.Dataset
        Draws with dims ``chain`` and ``draw``.
    reference : xarray.DataTree, xarray.Dataset or ExactMoments
        Reference draws (a DataTree's ``posterior`` group is used), or exact moments (then
        ``ref_mean`` and ``ref_sd`` are exact, and ``w1`` is against the exact draws if
        given, else NaN). Components are matched by position within each variable.
    var_names : sequence of str, optional
        Variables to compare; default the reference variables that are in ``posterior``.

    Returns
    -------
    pandas.DataFrame
        Columns ``variable``, ``label``, ``ref_mean``, ``ref_sd``, ``mean_err``,
        ``sd_err``, ``w1``.

    Raises
    ------
    ValueError
        If a variable is missing from either side or the sizes differ.
    """
    exact = reference if isinstance(reference, ExactMoments) else None
    ref = exact.mean if exact is not None else _reference_dataset(reference)
    if var_names is None:
        var_names = [v for v in ref.data_vars if v in posterior.data_vars]
        if not var_names:
            raise ValueError(
                "reference and draws share no variable: reference has "
                f"{sorted(map(str, ref.data_vars))}, draws have "
                f"{sorted(map(str, posterior.data_vars))}"
            )
    rows = []
    for var in var_names:
        for side, ds in (("draws", posterior), ("reference", ref)):
            if var not in ds.data_vars:
                raise ValueError(f"variable {var!r} is missing from the {side}")
        da = posterior[var]
        x = _flat_draws(da)
        if exact is not None:
            ref_mean = np.asarray(exact.mean[var].values, dtype=float).reshape(-1)
            ref_sd = np.asarray(exact.sd[var].values, dtype=float).reshape(-1)
            r = None if exact.draws is None else _flat_draws(exact.draws[var])
            n_ref = ref_mean.size
        else:
            r = _flat_draws(ref[var])
            n_ref = r.shape[-1]
        if x.shape[-1] != n_ref:
            raise ValueError(
                f"variable {var!r} has {x.shape[-1]} components in the draws and "
                f"{n_ref} in the reference"
            )
        x = x.reshape(-1, x.shape[-1])
        if r is not None:
            r = r.reshape(-1, r.shape[-1])
        if exact is None:
            ref_mean = r.mean(axis=0)
            ref_sd = r.std(axis=0, ddof=1)
        w1 = np.array(
            [
                wasserstein_distance(x[:, j], r[:, j]) if r is not None else np.nan
                for j in range(x.shape[1])
            ],
            dtype=float,
        )
        frame = pd.DataFrame(
            {
                "label": component_labels(da),
                "ref_mean": ref_mean,
                "ref_sd": ref_sd,
                "mean_err": (x.mean(axis=0) - ref_mean) / ref_sd,
                "sd_err": (x.std(axis=0, ddof=1) - ref_sd) / ref_sd,
                "w1": w1 / ref_sd,
            }
        )
        frame.insert(0, "variable", str(var))
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def error_curve(
    posterior: xr.Dataset,
    grad_per_draw: xr.DataArray,
    reference: xr.DataTree | xr.Dataset,
    *,
    var_names: Sequence[str] | None = None,
    n_points: int = 12,
    min_draws: int = 10,
) -> pd.DataFrame:
    """Error against the reference as a function of the gradient evaluations spent.

    The chains' first ``n`` draws are compared with the reference for ``n_points`` prefix
    lengths ``n`` spaced geometrically from ``min_draws`` to all draws; the cost of a prefix
    is the gradient evaluations of its draws, summed over chains.

    Parameters
    ----------
    posterior : xarray.Dataset
        Draws with dims ``chain`` and ``draw``.
    grad_per_draw : xarray.DataArray
        Gradient evaluations of each draw, dims ``(chain, draw)``
        (see :func:`gradient_evaluations`).
    reference : xarray.DataTree, xarray.Dataset or ExactMoments
        Reference draws or exact moments (see :func:`reference_errors`).
    var_names : sequence of str, optional
        Variables to compare (default: those shared with the reference).
    n_points : int, default 12
        Number of prefix lengths.
    min_draws : int, default 10
        Shortest prefix, in draws per chain.

    Returns
    -------
    pandas.DataFrame
        Columns ``draws`` (per chain), ``grad_evals`` (all chains), ``max_abs_mean_err``,
        ``rms_mean_err``, ``max_abs_sd_err``, ``mean_w1``, the errors of
        :func:`reference_errors` reduced over components.
    """
    n_points = check_int("n_points", n_points, 1)
    min_draws = check_int("min_draws", min_draws, 1)
    n_draws = posterior.sizes["draw"]
    lo = min(min_draws, n_draws)
    lengths = np.unique(np.geomspace(lo, n_draws, num=n_points).round().astype(int))
    cum = np.cumsum(np.asarray(grad_per_draw.transpose(*SAMPLE_DIMS).values, float), axis=1)
    rows = []
    for n in lengths:
        prefix = posterior.isel(draw=slice(0, int(n)))
        errs = reference_errors(prefix, reference, var_names=var_names)
        rows.append(
            {
                "draws": int(n),
                "grad_evals": float(cum[:, int(n) - 1].sum()),
                "max_abs_mean_err": float(errs["mean_err"].abs().max()),
                "rms_mean_err": float(np.sqrt((errs["mean_err"] ** 2).mean())),
                "max_abs_sd_err": float(errs["sd_err"].abs().max()),
                "mean_w1": float(errs["w1"].mean()),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class SamplerComparison:
    """What a comparison of samplers measured, on PyMC or torch.

    Returned by :func:`pmm_pymc.compare.compare_samplers` (PyMC step methods) and
    :func:`pmm_pymc.compare.torch_langevin.compare_langevin` (torch log-densities); built by
    :func:`tabulate_comparison`, so both have the same columns.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per sampler and scalar component of each variable: ``sampler``,
        ``variable``, ``label``, ``mean``, ``sd``, ``ess_bulk``, ``ess_tail``, ``r_hat``,
        ``mcse_mean`` (ArviZ), ``ess_bulk_per_1k_grad``, ``ess_tail_per_1k_grad`` and, with
        a reference (draws or exact moments), ``ref_mean``, ``ref_sd``, ``mean_err``,
        ``sd_err``, ``w1`` (in reference-sd units; see :func:`reference_errors`).
    summary : pandas.DataFrame
        One row per sampler: ``draws`` (per chain), ``chains``, ``grad_evals`` (post-tuning,
        all chains), ``grad_per_draw``, ``budget_ratio`` (``grad_evals`` over the common
        budget), ``step_size`` (mean), ``divergences``, ``wall_time_s`` (the main run:
        tuning and all its draws, before they are cut to the budget; not a pilot),
        ``min_ess_bulk``, ``min_ess_tail``, ``min_ess_bulk_per_1k_grad``,
        ``min_ess_tail_per_1k_grad``, ``max_r_hat``, ``max_mcse_over_sd`` and, with a
        reference, ``max_abs_mean_err``,
        ``rms_mean_err``, ``max_abs_sd_err``, ``mean_w1``.
    traces : dict of str to xarray.DataTree
        Each sampler's run as an ArviZ DataTree, cut to the common budget.
    error_curves : dict of str to pandas.DataFrame
        With a reference: each sampler's error against the reference for prefixes of its
        chains, against the gradient evaluations spent (:func:`error_curve`).
    budget : float or None
        The common budget, gradient evaluations per chain (None with ``budget="draws"``).
    settings : dict
        The arguments of the run, for the record.
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    traces: dict[str, xr.DataTree]
    error_curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    budget: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def cut_draws(idata: xr.DataTree, n_draws: int) -> xr.DataTree:
    """The first ``n_draws`` post-tuning draws of every chain (other groups untouched).

    Parameters
    ----------
    idata : xarray.DataTree
    n_draws : int

    Returns
    -------
    xarray.DataTree
        A copy with ``posterior`` and ``sample_stats`` cut.
    """
    out = idata.copy()
    for group in ("posterior", "sample_stats"):
        if group in out.children:
            out[group] = out[group].to_dataset().isel(draw=slice(0, n_draws))
    return out


def draws_within_budget(grad: xr.DataArray, budget_per_chain: float) -> int:
    """Largest draw count whose mean cost per chain stays within the budget (at least 1).

    Parameters
    ----------
    grad : xarray.DataArray
        Gradient evaluations of each draw, ``(chain, draw)`` (:func:`gradient_evaluations`).
    budget_per_chain : float

    Returns
    -------
    int
    """
    mean_cum = np.cumsum(np.asarray(grad.values, dtype=float), axis=1).mean(axis=0)
    return max(1, int(np.searchsorted(mean_cum, budget_per_chain * (1 + 1e-12), side="right")))


def _scalar_stat(stats: xr.Dataset, suffix: str, reduce: str) -> float:
    names = [n for n in stats.data_vars if str(n) == suffix or str(n).endswith("__" + suffix)]
    if not names:
        return float("nan")
    values = np.concatenate([np.asarray(stats[n].values, dtype=float).ravel() for n in names])
    return float(values.sum() if reduce == "sum" else values.mean())


def fit_to_budget(idata: xr.DataTree, budget_per_chain: float | None) -> tuple[xr.DataTree, float]:
    """One run against the common gradient budget: it sets it, or is cut to it.

    Parameters
    ----------
    idata : xarray.DataTree
        A run whose ``sample_stats`` have ``n_steps``.
    budget_per_chain : float or None
        The budget; None when this run is the first of ``budget="gradients"``.

    Returns
    -------
    (xarray.DataTree, float)
        ``idata`` (with None: unchanged, and its mean gradient evaluations per chain become
        the budget; else cut with :func:`draws_within_budget`) and the budget.
    """
    grad = gradient_evaluations(idata["sample_stats"].to_dataset())
    if budget_per_chain is None:
        return idata, float(grad.sum(dim="draw").mean())
    return cut_draws(idata, draws_within_budget(grad, budget_per_chain)), budget_per_chain


def tabulate_comparison(
    traces: Mapping[str, xr.DataTree],
    walls: Mapping[str, float],
    names: list[str],
    ref: xr.Dataset | ExactMoments | None,
    budget_per_chain: float | None,
    settings: dict[str, Any],
) -> SamplerComparison:
    """The tables of a comparison: ArviZ diagnostics and reference errors of every run.

    Parameters
    ----------
    traces : mapping of str to xarray.DataTree
        Sampler name to its run (``posterior`` and ``sample_stats`` with ``n_steps``).
    walls : mapping of str to float
        Sampler name to its wall time in seconds.
    names : list of str
        Variables to tabulate (those missing from a run are skipped).
    ref : xarray.Dataset, ExactMoments or None
        Reference draws or exact moments.
    budget_per_chain : float or None
        The common gradient budget per chain.
    settings : dict
        Recorded as :attr:`SamplerComparison.settings`.

    Returns
    -------
    SamplerComparison
    """
    tables, summaries, curves = [], [], {}
    for name, idata in traces.items():
        posterior = idata["posterior"].to_dataset()
        stats = idata["sample_stats"].to_dataset()
        var_names = [v for v in names if v in posterior.data_vars]
        try:
            grad = gradient_evaluations(stats)
            grad_evals = float(grad.sum())
        except ValueError:
            grad, grad_evals = None, float("nan")
        table = variable_diagnostics(posterior, var_names=var_names, grad_evals=grad_evals)
        if ref is not None:
            ref_vars = [v for v in var_names if v in ref.data_vars]
            errs = reference_errors(posterior, ref, var_names=ref_vars)
            table = table.merge(errs, on=["variable", "label"], how="left")
            if grad is not None:
                curves[name] = error_curve(posterior, grad, ref, var_names=ref_vars)
        table.insert(0, "sampler", name)
        tables.append(table)
        n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
        row = {
            "sampler": name,
            "draws": n_draws,
            "chains": n_chains,
            "grad_evals": grad_evals,
            "grad_per_draw": grad_evals / (n_chains * n_draws),
            "budget_ratio": (
                grad_evals / (budget_per_chain * n_chains) if budget_per_chain else float("nan")
            ),
            "step_size": _scalar_stat(stats, "step_size", "mean"),
            "divergences": int(np.nan_to_num(_scalar_stat(stats, "diverging", "sum"))),
            "wall_time_s": walls[name],
            "min_ess_bulk": table["ess_bulk"].min(),
            "min_ess_tail": table["ess_tail"].min(),
            "min_ess_bulk_per_1k_grad": table["ess_bulk_per_1k_grad"].min(),
            "min_ess_tail_per_1k_grad": table["ess_tail_per_1k_grad"].min(),
            "max_r_hat": table["r_hat"].max(),
            "max_mcse_over_sd": (table["mcse_mean"] / table["sd"]).max(),
        }
        if ref is not None:
            err = table.dropna(subset=["mean_err"])
            row.update(
                max_abs_mean_err=err["mean_err"].abs().max(),
                rms_mean_err=float(np.sqrt((err["mean_err"] ** 2).mean())),
                max_abs_sd_err=err["sd_err"].abs().max(),
                mean_w1=err["w1"].mean(),
            )
        summaries.append(row)
    return SamplerComparison(
        table=pd.concat(tables, ignore_index=True),
        summary=pd.DataFrame(summaries),
        traces=dict(traces),
        error_curves=curves,
        budget=budget_per_chain,
        settings=settings,
    )
