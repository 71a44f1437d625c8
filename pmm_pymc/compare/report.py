"""Write comparison results to a folder: ``report.md``, PNG figures, CSV tables, netCDF traces.

The layout of an MCMC report folder (:func:`write_mcmc_report`)::

    report.md                      overview table, then one section per posterior
    summary.csv, variables.csv     the tables of every posterior, tidy
    <posterior>/<sampler>.nc       the pymc.sample DataTree (xarray.open_datatree reloads it)
    <posterior>/*.png              error against gradient evaluations, trace, rank, ESS plots

and of a diffusion report folder (:func:`write_diffusion_report`)::

    report.md, metrics.csv, runs.csv, metric_vs_nfe.png, results.nc

The traces are written with :meth:`xarray.DataTree.to_netcdf`, which needs a netCDF4 engine
(``h5netcdf`` or ``netCDF4``); :func:`check_netcdf_engine` says so before any sampling.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from pmm_pymc._validate import check_bool
from pmm_pymc.compare import plots

if TYPE_CHECKING:
    from pmm_pymc.compare.diffusion import DiffusionComparison
    from pmm_pymc.compare.mcmc import SamplerComparison

__all__ = [
    "check_netcdf_engine",
    "check_output_dir",
    "markdown_table",
    "write_diffusion_report",
    "write_mcmc_report",
]

_NETCDF4_ENGINES = ("h5netcdf", "netCDF4")

#: Columns of the per-posterior overview, in order, with their headers.
_OVERVIEW = {
    "sampler": "sampler",
    "draws": "draws/chain",
    "grad_evals": "grad evals",
    "min_ess_bulk": "min ESS bulk",
    "min_ess_bulk_per_1k_grad": "min ESS bulk / 1k grad",
    "min_ess_tail_per_1k_grad": "min ESS tail / 1k grad",
    "max_r_hat": "max R-hat",
    "max_abs_mean_err": "max abs mean err",
    "max_abs_sd_err": "max abs sd err",
    "mean_w1": "mean W1",
    "divergences": "divergences",
    "step_size": "step size",
    "wall_time_s": "wall s",
}
_VARIABLES = {
    "sampler": "sampler",
    "label": "variable",
    "mean": "mean",
    "sd": "sd",
    "ess_bulk": "ESS bulk",
    "ess_tail": "ESS tail",
    "ess_bulk_per_1k_grad": "ESS bulk / 1k grad",
    "r_hat": "R-hat",
    "mcse_mean": "MCSE mean",
    "mean_err": "mean err",
    "sd_err": "sd err",
    "w1": "W1",
}


def check_netcdf_engine() -> str:
    """The engine DataTrees are written with; raises if none is installed.

    Returns
    -------
    str
        ``"h5netcdf"`` or ``"netCDF4"``.

    Raises
    ------
    ModuleNotFoundError
        If neither is installed.
    """
    for engine in _NETCDF4_ENGINES:
        if importlib.util.find_spec(engine) is not None:
            return engine.lower() if engine == "h5netcdf" else "netcdf4"
    raise ModuleNotFoundError(
        "writing the traces as netCDF needs h5netcdf or netCDF4; install one (pip install h5netcdf)"
    )


def check_output_dir(path: str | Path, *, overwrite: bool = False) -> Path:
    """Make sure ``path`` can receive a report, before any work is done; leave nothing behind.

    The folder must be absent, empty, or (with ``overwrite``) a folder; missing folders
    must be creatable, and the folder must be writable: a probe file is written in it and
    removed. Folders this check creates are removed again, so a refused or failed run leaves
    no trace; the report writers create the folder.

    Parameters
    ----------
    path : str or pathlib.Path
        The output folder.
    overwrite : bool, default False
        Allow an existing non-empty folder (files of the same name are replaced, others
        are left alone).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileExistsError
        If ``path`` exists, is not empty and ``overwrite`` is False, or is a file.
    NotADirectoryError
        If a parent of ``path`` is a file.
    OSError
        If the folder cannot be created or written (``PermissionError``,
        ``FileNotFoundError`` for a root that cannot hold it, a read-only file system, a
        full disk...); the message names the folder and the reason.
    """
    overwrite = check_bool("overwrite", overwrite)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output path {str(path)!r} exists and is not a directory")
    created: list[Path] = []  # the folders to make, deepest first
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        created.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"cannot create output directory {str(path)!r}: {str(existing)!r} is a file"
        )
    try:
        if not created and any(path.iterdir()) and not overwrite:
            raise FileExistsError(
                f"output directory {str(path)!r} exists and is not empty; choose another one "
                "or pass --overwrite (overwrite=True)"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(dir=path, prefix=".pmm-compare-probe-")
            try:
                os.write(handle, b"probe")
            finally:
                os.close(handle)
                os.unlink(probe)
        except OSError as err:
            action = "create" if created else "write to"
            raise type(err)(
                f"cannot {action} output directory {str(path)!r}: {err.strerror or err}"
            ) from err
    finally:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
    return path


def _write_netcdf(dt: xr.DataTree, path: Path, engine: str) -> None:
    # Unlink first: with --overwrite the old file may still be open (HDF5 refuses to truncate).
    path.unlink(missing_ok=True)
    dt.to_netcdf(path, engine=engine)


def _format(value: Any, digits: int) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "–" if np.isnan(value) else str(value)
        if float(value).is_integer() and 1 <= abs(value) < 1e15:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|")


def markdown_table(
    frame: pd.DataFrame,
    columns: Mapping[str, str] | None = None,
    *,
    digits: int = 3,
) -> str:
    """A pandas DataFrame as a GitHub-flavoured markdown table.

    Parameters
    ----------
    frame : pandas.DataFrame
    columns : mapping of str to str, optional
        Column name to header, in the order to show; columns missing from ``frame`` are
        skipped. Default: all columns under their own names.
    digits : int, default 3
        Significant digits of floats.

    Returns
    -------
    str
    """
    if columns is None:
        columns = {str(c): str(c) for c in frame.columns}
    keep = [c for c in columns if c in frame.columns]
    lines = [
        "| " + " | ".join(columns[c] for c in keep) + " |",
        "|" + "|".join(" --- " for _ in keep) + "|",
    ]
    for _, row in frame[keep].iterrows():
        lines.append("| " + " | ".join(_format(row[c], digits) for c in keep) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _plot_vars(result: SamplerComparison, limit: int = 4) -> list[str]:
    """The first ``limit`` variables of the table (free variables first, in model order)."""
    return list(dict.fromkeys(result.table["variable"]))[:limit]


def _mcmc_section(
    name: str, result: SamplerComparison, folder: Path, root: Path, make_plots: bool
) -> list[str]:
    rel = folder.relative_to(root)
    lines = [f"## {name}", ""]
    settings = result.settings
    budget = (
        f"{result.budget:.0f} gradient evaluations per chain after tuning"
        if result.budget is not None
        else f"{settings.get('draws')} draws per chain (no budget matching)"
    )
    lines += [
        f"Budget: {budget}; {settings.get('chains')} chains, {settings.get('tune')} tuning "
        f"steps each, seed {settings.get('random_seed')}.",
        "",
        markdown_table(result.summary, _OVERVIEW),
        "",
    ]
    if make_plots and result.error_curves:
        png = plots.plot_error_vs_cost(
            result.error_curves, folder / "error_vs_grad.png", title=f"{name}: error vs cost"
        )
        lines += [
            "Error against the reference draws for growing prefixes of the chains, against "
            "the gradient evaluations those prefixes cost:",
            "",
            f"![{name}: error against gradient evaluations]({rel / png.name})",
            "",
        ]
    if make_plots:
        var_names = _plot_vars(result)
        for sampler, dt in result.traces.items():
            slug = _slug(sampler)
            figs = [
                ("trace", plots.plot_trace),
                ("rank", plots.plot_rank),
                ("ess", plots.plot_ess_evolution),
            ]
            row = []
            for kind, fn in figs:
                png = fn(
                    dt,
                    folder / f"{kind}_{slug}.png",
                    var_names=var_names,
                    title=f"{name}: {sampler}",
                )
                row.append(f"![{sampler} {kind}]({rel / png.name})")
            lines += [f"### {sampler}: trace, rank and ESS evolution", "", *row, ""]
    lines += [
        "<details><summary>Per-variable diagnostics</summary>",
        "",
        markdown_table(result.table, _VARIABLES),
        "",
        "</details>",
        "",
    ]
    return lines


def write_mcmc_report(
    results: Mapping[str, SamplerComparison],
    out: str | Path,
    *,
    title: str = "PMM against LMC and NUTS",
    command: str | None = None,
    make_plots: bool = True,
    progressbar: bool = False,
    intro: str | None = None,
) -> Path:
    """Write the report of :func:`~pmm_pymc.compare.compare_samplers` runs to a folder.

    Also writes the report of :func:`~pmm_pymc.compare.torch_langevin.compare_langevin`
    runs, which have the same tables (give them their own ``intro``).

    Parameters
    ----------
    results : mapping of str to SamplerComparison
        Posterior (or model) name to its comparison.
    out : str or pathlib.Path
        Output folder, created if missing (see :func:`check_output_dir`; this function
        does not check it).
    title : str
        Heading of ``report.md``.
    command : str, optional
        The command line that produced the results, recorded in the report.
    make_plots : bool, default True
        Draw the figures (needs matplotlib and arviz-plots).
    progressbar : bool, default False
        A tqdm bar over the posteriors.
    intro : str, optional
        The paragraph under the command that says how the comparison was made; default the
        one of the PyMC comparison against posteriordb reference draws.

    Returns
    -------
    pathlib.Path
        The path of ``report.md``.
    """
    from tqdm.auto import tqdm

    make_plots = check_bool("make_plots", make_plots)
    progressbar = check_bool("progressbar", progressbar)
    engine = check_netcdf_engine()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    summaries, variables = [], []
    sections: list[str] = []
    for name, result in tqdm(results.items(), disable=not progressbar, desc="report"):
        folder = root / _slug(name)
        folder.mkdir(exist_ok=True)
        for sampler, dt in result.traces.items():
            _write_netcdf(dt, folder / f"{_slug(sampler)}.nc", engine)
        sections += _mcmc_section(name, result, folder, root, make_plots)
        summary = result.summary.copy()
        summary.insert(0, "posterior", name)
        summaries.append(summary)
        table = result.table.copy()
        table.insert(0, "posterior", name)
        variables.append(table)
    summary_all = pd.concat(summaries, ignore_index=True)
    summary_all.to_csv(root / "summary.csv", index=False)
    pd.concat(variables, ignore_index=True).to_csv(root / "variables.csv", index=False)

    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    lines += [
        intro
        or "Every sampler gets the same number of gradient evaluations after tuning (read from "
        "each step's `n_steps` statistic; `budget_ratio` in `summary.csv` shows how close each "
        "came) and starts its chains from the same jittered points. ESS, R-hat and MCSE are "
        "ArviZ's (arviz-stats). Errors are against the posteriordb reference draws, in units "
        "of the reference sd: `mean err` and `sd err` are the largest absolute errors of a "
        "posterior mean and sd over all scalar components, `mean W1` the mean 1-D Wasserstein "
        "distance of the marginals. Traces: `<posterior>/<sampler>.nc` "
        "(`xarray.open_datatree`).",
        "",
        "## Overview",
        "",
        markdown_table(summary_all, {"posterior": "posterior", **_OVERVIEW}),
        "",
        *sections,
    ]
    report = root / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def write_diffusion_report(
    result: DiffusionComparison,
    out: str | Path,
    *,
    title: str | None = None,
    command: str | None = None,
    metrics: Sequence[str] | None = None,
    make_plots: bool = True,
) -> Path:
    """Write the report of a :func:`~pmm_pymc.compare.compare_diffusion` run to a folder.

    Parameters
    ----------
    result : DiffusionComparison
        What :func:`~pmm_pymc.compare.compare_diffusion` returned.
    out : str or pathlib.Path
        Output folder, created if missing (see :func:`check_output_dir`; this function
        does not check it).
    title : str, optional
        Heading of ``report.md``.
    command : str, optional
        The command line that produced the result.
    metrics : sequence of str, optional
        Metrics to plot; default all.
    make_plots : bool, default True
        Draw the metric-against-NFE figure.

    Returns
    -------
    pathlib.Path
        The path of ``report.md``.
    """
    make_plots = check_bool("make_plots", make_plots)
    engine = check_netcdf_engine()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(root / "metrics.csv", index=False)
    result.runs.to_csv(root / "runs.csv", index=False)
    _write_netcdf(result.to_datatree(), root / "results.nc", engine)
    title = title or f"Diffusion samplers on {result.testbed}"
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    s = result.settings
    lines += [
        f"Testbed `{result.testbed}`; {s.get('n_samples')} samples per run, seeds "
        f"{s.get('seeds')}, device `{s.get('device')}`, schedule `{s.get('schedule')}`. Each "
        "metric compares the generated samples with as many exact samples of the target "
        "(a fresh set per seed); the table gives its mean and sd over the seeds, at the NFE "
        "actually spent (mean network evaluations per sample). `exact` is the metric between "
        "two independent sets of exact samples: the noise floor.",
        "",
    ]
    if make_plots:
        png = plots.plot_metric_vs_nfe(
            result.table,
            root / "metric_vs_nfe.png",
            metrics=metrics,
            title=title,
            reference=result.floor,
        )
        lines += [f"![metric against NFE]({png.name})", ""]
    for metric, rows in result.table.groupby("metric", sort=False):
        # dropna=False: with one seed the sd is NaN, and pivot_table would drop its column
        wide = rows.pivot_table(
            index=["method", "target_nfe"], values=["nfe", "mean", "sd"], dropna=False
        )
        wide = wide.reset_index()[["method", "target_nfe", "nfe", "mean", "sd"]]
        lines += [f"## {metric}", ""]
        if result.floor is not None:
            floor = result.floor[result.floor["metric"] == metric]
            if len(floor):
                sd = float(floor["sd"].iloc[0])
                spread = f" ± {sd:.2g}" if np.isfinite(sd) else " (one seed: no sd)"
                lines += [f"Exact against exact: {floor['mean'].iloc[0]:.4g}{spread}.", ""]
        lines += [
            markdown_table(
                wide,
                {
                    "method": "method",
                    "target_nfe": "target NFE",
                    "nfe": "NFE",
                    "mean": "mean",
                    "sd": "sd over seeds",
                },
                digits=4,
            ),
            "",
        ]
    report = root / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def load_mcmc_traces(folder: str | Path) -> dict[str, xr.DataTree]:
    """Reload the traces of one posterior of a report folder.

    Parameters
    ----------
    folder : str or pathlib.Path
        ``<report>/<posterior>``.

    Returns
    -------
    dict of str to xarray.DataTree
        Sampler (file stem) to its DataTree.
    """
    return {p.stem: xr.open_datatree(p) for p in sorted(Path(folder).glob("*.nc"))}
