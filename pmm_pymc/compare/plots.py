"""Figures of a sampler comparison: arviz-plots diagnostics and error-against-cost curves.

Everything is drawn with matplotlib's non-interactive Agg backend and saved as PNG; each
function returns the path it wrote. Needs the ``plot`` extra (matplotlib, arviz-plots),
imported on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pmm_pymc._validate import check_int

__all__ = [
    "plot_ess_evolution",
    "plot_error_vs_cost",
    "plot_frontier",
    "plot_metric_vs_nfe",
    "plot_rank",
    "plot_trace",
]

#: Dims of a DataTree's sample axes.
_SAMPLE_DIMS = ("chain", "draw")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _log_axes(ax) -> None:
    """Plain-number major tick labels (``%g``), none on the minor ticks, on log axes.

    Plain text also spares matplotlib's mathtext parser, whose first use costs seconds.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            # 1-2-5 ticks: a curve spanning less than a decade still gets labels
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        if axis.get_scale() in ("log", "symlog"):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())


def _save_figure(fig, path: str | Path, title: str | None) -> Path:
    """Title, lay out, save as PNG and close a matplotlib figure; the path written."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _azp():
    _pyplot()
    import arviz_plots

    return arviz_plots


def _save_collection(pc, path: Path, title: str | None = None) -> Path:
    plt = _pyplot()
    fig = pc.viz["figure"].item() if "figure" in pc.viz.children or "figure" in pc.viz else None
    if fig is None:  # pragma: no cover - arviz-plots always stores the figure
        fig = plt.gcf()
    if title:
        fig.suptitle(title, y=1.03, fontweight="bold")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _limited(dt: xr.DataTree, var_names: Sequence[str], max_components: int) -> dict:
    """Coords that keep at most ``max_components`` entries of each variable's first dim."""
    max_components = check_int("max_components", max_components, 1)
    posterior = dt["posterior"].to_dataset()
    coords: dict[str, list] = {}
    for var in var_names:
        for dim in posterior[var].dims:
            if dim in _SAMPLE_DIMS:
                continue
            size = posterior.sizes[dim]
            if size > max_components:
                coords[dim] = list(posterior[dim].values[:max_components])
    return coords


def plot_trace(
    dt: xr.DataTree,
    path: str | Path,
    *,
    var_names: Sequence[str],
    title: str | None = None,
    max_components: int = 4,
) -> Path:
    """Trace plot (:func:`arviz_plots.plot_trace`) of a few variables, saved as PNG.

    Parameters
    ----------
    dt : xarray.DataTree
        A :func:`pymc.sample` result.
    path : str or pathlib.Path
        Output file.
    var_names : sequence of str
        Variables to draw.
    title : str, optional
        Figure title.
    max_components : int, default 4
        Only the first entries of each dim of larger variables are drawn.

    Returns
    -------
    pathlib.Path
    """
    azp = _azp()
    pc = azp.plot_trace(
        dt,
        var_names=list(var_names),
        coords=_limited(dt, var_names, max_components),
        backend="matplotlib",
    )
    return _save_collection(pc, Path(path), title)


def plot_rank(
    dt: xr.DataTree,
    path: str | Path,
    *,
    var_names: Sequence[str],
    title: str | None = None,
    max_components: int = 4,
) -> Path:
    """Fractional rank Δ-ECDF plot (:func:`arviz_plots.plot_rank`), saved as PNG.

    Parameters
    ----------
    dt, path, var_names, title, max_components
        As for :func:`plot_trace`.

    Returns
    -------
    pathlib.Path
    """
    azp = _azp()
    pc = azp.plot_rank(
        dt,
        var_names=list(var_names),
        coords=_limited(dt, var_names, max_components),
        backend="matplotlib",
    )
    return _save_collection(pc, Path(path), title)


def plot_ess_evolution(
    dt: xr.DataTree,
    path: str | Path,
    *,
    var_names: Sequence[str],
    title: str | None = None,
    max_components: int = 4,
) -> Path:
    """ESS (bulk and tail) against the number of draws, saved as PNG.

    Draws with :func:`arviz_plots.plot_ess_evolution`, which computes the ESS of growing
    prefixes of the chains.

    Parameters
    ----------
    dt, path, var_names, title, max_components
        As for :func:`plot_trace`.

    Returns
    -------
    pathlib.Path
    """
    azp = _azp()
    pc = azp.plot_ess_evolution(
        dt,
        var_names=list(var_names),
        coords=_limited(dt, var_names, max_components),
        backend="matplotlib",
    )
    return _save_collection(pc, Path(path), title)


def plot_error_vs_cost(
    curves: Mapping[str, pd.DataFrame],
    path: str | Path,
    *,
    title: str | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Error against the reference as a function of gradient evaluations, per sampler.

    Three panels, log-log: the largest absolute error of a posterior mean, the largest
    absolute error of a posterior sd, and the mean 1-D Wasserstein distance, all in
    reference-sd units (:func:`pmm_pymc.compare.diagnostics.error_curve`).

    Parameters
    ----------
    curves : mapping of str to pandas.DataFrame
        Sampler name to its error curve.
    path : str or pathlib.Path
        Output file.
    title : str, optional
        Figure title.
    references : mapping of str to float, optional
        Horizontal lines to draw on the mean-error panel (e.g. the error expected from
        independent draws of the same size).

    Returns
    -------
    pathlib.Path
    """
    plt = _pyplot()
    panels = (
        ("max_abs_mean_err", "max |mean error| (ref sd)"),
        ("max_abs_sd_err", "max |sd error| (ref sd)"),
        ("mean_w1", "mean W1 (ref sd)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        for name, curve in curves.items():
            ax.plot(curve["grad_evals"], curve[column], marker="o", ms=3, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gradient evaluations (all chains)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        _log_axes(ax)
    for name, value in (references or {}).items():
        axes[0][0].axhline(value, color="grey", ls="--", lw=1, label=name)
    axes[0][0].legend(fontsize=8)
    return _save_figure(fig, path, title)


def plot_metric_vs_nfe(
    table: pd.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    reference: pd.DataFrame | None = None,
) -> Path:
    """Sample-quality metrics against network evaluations, one line per method.

    Parameters
    ----------
    table : pandas.DataFrame
        Long table with columns ``method``, ``nfe``, ``metric``, ``mean``, ``sd`` (the spread
        over seeds), as :func:`pmm_pymc.compare.compare_diffusion` returns.
    path : str or pathlib.Path
        Output file.
    metrics : sequence of str, optional
        Metrics to draw (one panel each); default all.
    title : str, optional
        Figure title.
    reference : pandas.DataFrame, optional
        Rows with columns ``metric``, ``mean``, ``sd`` drawn as a horizontal band (e.g. the
        metric between two independent sets of exact samples: the noise floor).

    Returns
    -------
    pathlib.Path
    """
    plt = _pyplot()
    metrics = list(dict.fromkeys(table["metric"])) if metrics is None else list(metrics)
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        rows = table[table["metric"] == metric]
        for method, group in rows.groupby("method", sort=False):
            group = group.sort_values("nfe")
            ax.errorbar(
                group["nfe"],
                group["mean"],
                yerr=group["sd"],
                marker="o",
                ms=3,
                capsize=2,
                label=str(method),
            )
        linthresh = float(np.nanmax(np.abs(rows["mean"]))) * 1e-3 if len(rows) else 1.0
        if reference is not None:
            ref = reference[reference["metric"] == metric]
            if len(ref):
                mean, sd = float(ref["mean"].iloc[0]), float(np.nan_to_num(ref["sd"].iloc[0]))
                ax.axhspan(mean - sd, mean + sd, color="grey", alpha=0.2)
                ax.axhline(mean, color="grey", lw=1, ls="--", label="exact vs exact")
                linthresh = max(abs(mean) + 2 * sd, 1e-12)
        # symlog: the metrics span decades and the unbiased ones (MMD, energy) and the
        # log-density gap can be negative; linear within the exact-vs-exact noise floor.
        ax.set_yscale("symlog", linthresh=max(linthresh, 1e-12))
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        _log_axes(ax)
    axes[0][0].legend(fontsize=8)
    return _save_figure(fig, path, title)


def plot_frontier(table: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Bias against gradients per effective sample, one curve per sampler.

    Two panels, log-log: the worst absolute error of a posterior mean and of a posterior
    sd, in reference sd, against gradient evaluations per effective sample
    (:func:`pmm_pymc.compare.frontier.frontier`). A sampler's points are joined in order
    of their fixed step size; points whose step was adapted (``target_accept``, or
    another adaptation: the ``adapted`` column) are hollow squares,
    samplers with a single point (NUTS, nutpie) are stars. The grey band is the noise
    floor (median over the points): errors inside it are Monte-Carlo noise.

    Parameters
    ----------
    table : pandas.DataFrame
        Frontier rows: ``sampler``, ``step_size``, ``target_accept``, ``grad_per_ess``,
        ``max_abs_mean_err``, ``max_abs_sd_err``, ``mean_floor``, ``sd_floor``.
    path : str or pathlib.Path
        Output file.
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    plt = _pyplot()
    panels = (
        ("max_abs_mean_err", "mean_floor", "worst |mean error| (ref sd)"),
        ("max_abs_sd_err", "sd_floor", "worst |sd error| (ref sd)"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (column, floor, label) in zip(axes[0], panels):
        for k, (name, curve) in enumerate(table.groupby("sampler", sort=False)):
            color = colors[k % len(colors)]
            if len(curve) == 1 and not np.isfinite(curve["step_size"]).any():
                ax.plot(curve["grad_per_ess"], curve[column], "*", ms=12, color=color, label=name)
                continue
            is_adapted = (
                curve["adapted"].astype(bool)
                if "adapted" in curve
                else curve["target_accept"].notna()
            )
            fixed = curve[~is_adapted].sort_values("step_size")
            adapted = curve[is_adapted]
            ax.plot(fixed["grad_per_ess"], fixed[column], "o-", ms=4, color=color, label=name)
            if len(adapted):
                ax.plot(
                    adapted["grad_per_ess"],
                    adapted[column],
                    "s",
                    ms=7,
                    mfc="none",
                    color=color,
                )
        level = float(np.nanmedian(table[floor]))
        ax.axhspan(1e-4, level, color="grey", alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-3, 0.5 * float(np.nanmin(table[column]))))
        ax.set_xlabel("gradient evaluations per effective sample")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        _log_axes(ax)
    axes[0][0].legend(fontsize=7)
    return _save_figure(fig, path, title)
