"""Regenerate docs/results.md: PMM against LMC and NUTS on every bundled posterior, and the
diffusion samplers on the exact-score testbeds.

Runs ``pmm-compare mcmc --posterior all`` and ``pmm-compare diffusion`` (through
:func:`pmm_pymc.cli.main`) into ``build/compare-results/`` (full reports, traces; not
committed), prints the headline numbers, and writes ``docs/results.md`` with the exact commands,
the settings, the tables and the key figures (copied to ``docs/results/``).

Usage::

    python benchmarks/bench_compare.py            # the full run (about 20-25 min on 2 cores)
    python benchmarks/bench_compare.py --quick    # a small run to check the pipeline

The sizes of the full run are set by the constants below, chosen to finish in about 25 minutes
on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pmm_pymc.cli import main as pmm_compare
from pmm_pymc.compare.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]

#: The full run. NUTS's tree depth is capped at 8 (PyMC's default is 10): on ``diamonds`` NUTS
#: saturates the tree (1023 gradients per draw) and its tuning alone would take most of the
#: time budget; on the other posteriors depth 8 is not reached.
FULL = {
    "mcmc": "--draws 4000 --tune 1000 --chains 4 --seed 0 --max-treedepth 8",
    "diffusion": {
        "mixture2d": "--nfes 10,20,50,80,200 --add ddpm:1000 --seeds 3 --n-samples 2000",
        "digits-net": "--nfes 10,20,50,80 --add ddpm:1000 --seeds 2 --n-samples 1000",
        "digits64": "--nfes 10,20,50,80,200 --add ddpm:1000 --seeds 3 --n-samples 2000",
    },
}
QUICK = {
    "mcmc": "--draws 100 --tune 100 --chains 2 --seed 0 --max-treedepth 6",
    "diffusion": {
        "mixture2d": "--nfes 10,50 --add ddpm:200 --seeds 2 --n-samples 300",
        "digits-net": "--nfes 10 --methods pmm,ddim --seeds 2 --n-samples 200",
    },
}


def _run(argv: list[str]) -> float:
    print("$ pmm-compare " + shlex.join(argv), flush=True)
    start = time.perf_counter()
    status = pmm_compare(argv)
    if status != 0:
        raise SystemExit(status)
    return time.perf_counter() - start


def _default_k() -> int:
    import inspect

    from pmm_pymc.mcmc.steps import PoissonMidpoint

    return int(inspect.signature(PoissonMidpoint.__init__).parameters["K"].default)


def _treedepth_note(mcmc_options: str, mcmc_dir: Path) -> list[str]:
    """Say that NUTS's tree depth was capped, and on which posteriors the cap bound."""
    import xarray as xr

    options = shlex.split(mcmc_options)
    if "--max-treedepth" not in options:
        return []
    depth = options[options.index("--max-treedepth") + 1]
    at_cap = []
    for path in sorted(mcmc_dir.glob("*/NUTS.nc")):
        with xr.open_datatree(path) as dt:
            stats = dt["sample_stats"].to_dataset()
            if "reached_max_treedepth" in stats:
                share = float(stats["reached_max_treedepth"].mean())
                at_cap.append(f"{path.parent.name} {100 * share:.0f}%")
    return [
        f"NUTS ran with `max_treedepth={depth}` (PyMC's default is 10) to fit the time budget: "
        "on `diamonds` NUTS saturates its tree (1023 gradient evaluations per draw at depth "
        "10), and its tuning alone would take most of the run. NUTS's tuning is not charged "
        "to its budget. Share of NUTS's post-tuning draws that hit the cap: "
        + ", ".join(at_cap)
        + ".",
        "",
    ]


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _mcmc_section(summary: pd.DataFrame, figures: dict[str, str]) -> list[str]:
    """Per posterior: PMM vs LMC at equal budget, ESS per 1000 gradients next to NUTS."""
    wide = summary.pivot(index="posterior", columns="sampler")
    posteriors = list(dict.fromkeys(summary["posterior"]))
    rows = []
    for post in posteriors:
        w = wide.loc[post]
        rows.append(
            {
                "posterior": post,
                "grad evals / chain": round(w[("grad_evals", "PMM")] / w[("chains", "PMM")]),
                "PMM mean err": w[("max_abs_mean_err", "PMM")],
                "LMC mean err": w[("max_abs_mean_err", "LMC")],
                "NUTS mean err": w[("max_abs_mean_err", "NUTS")],
                "PMM sd err": w[("max_abs_sd_err", "PMM")],
                "LMC sd err": w[("max_abs_sd_err", "LMC")],
                "NUTS sd err": w[("max_abs_sd_err", "NUTS")],
                "PMM ESS/1k": w[("min_ess_bulk_per_1k_grad", "PMM")],
                "LMC ESS/1k": w[("min_ess_bulk_per_1k_grad", "LMC")],
                "NUTS ESS/1k": w[("min_ess_bulk_per_1k_grad", "NUTS")],
                "PMM R-hat": w[("max_r_hat", "PMM")],
                "LMC R-hat": w[("max_r_hat", "LMC")],
                "NUTS R-hat": w[("max_r_hat", "NUTS")],
            }
        )
    table = pd.DataFrame(rows)
    pmm_better_mean = table["PMM mean err"] < table["LMC mean err"]
    pmm_better_sd = table["PMM sd err"] < table["LMC sd err"]
    pmm_better_ess = table["PMM ESS/1k"] > table["LMC ESS/1k"]
    nuts_best_ess = table["NUTS ESS/1k"] > table[["PMM ESS/1k", "LMC ESS/1k"]].max(axis=1)
    both_bad = table[["PMM R-hat", "LMC R-hat"]].min(axis=1) > 1.05

    def names(mask: pd.Series) -> str:
        chosen = list(table.loc[mask, "posterior"])
        return ", ".join(chosen) if chosen else "none"

    n = len(table)
    lines = [
        "### Outcome at equal gradient budget (computed from the table below)",
        "",
        f"- PMM's largest posterior-mean error is smaller than LMC's on "
        f"{int(pmm_better_mean.sum())} of {n} posteriors ({names(pmm_better_mean)}), and "
        f"larger on {names(~pmm_better_mean)}.",
        f"- PMM's largest posterior-sd error is smaller than LMC's on "
        f"{int(pmm_better_sd.sum())} of {n} ({names(pmm_better_sd)}).",
        f"- PMM's smallest bulk ESS per 1000 gradient evaluations is higher than LMC's on "
        f"{int(pmm_better_ess.sum())} of {n} ({names(pmm_better_ess)}).",
        f"- NUTS has the highest ESS per 1000 gradient evaluations on {int(nuts_best_ess.sum())} "
        f"of {n} ({names(nuts_best_ess)}).",
        f"- Both Langevin samplers have max R-hat > 1.05 (not converged at this budget) on "
        f"{names(both_bad)}; their errors there measure how far they got, not their bias.",
        "",
        "Errors are the largest absolute error over all scalar components of a posterior mean "
        "(`mean err`) or sd (`sd err`), in units of the reference sd; `ESS/1k` is the smallest "
        "bulk ESS over components per 1000 post-tuning gradient evaluations (all chains). "
        "Every sampler spent the same gradient evaluations per chain (first column; NUTS "
        "within one draw's cost of it).",
        "",
        markdown_table(table, digits=3),
        "",
    ]
    for post in posteriors:
        if post in figures:
            lines += [f"![{post}: error against gradient evaluations]({figures[post]})", ""]
    return lines


def _diffusion_section(name: str, metrics: pd.DataFrame, figure: str) -> list[str]:
    lines = [f"### {name}", "", f"![{name}: metrics against NFE]({figure})", ""]
    for metric in ("mmd", "sliced_w2", "log_density_gap", "frechet"):
        rows = metrics[metrics["metric"] == metric].copy()
        if rows.empty:
            continue
        rows["value"] = [f"{_fmt(m, 3)} ± {_fmt(s, 2)}" for m, s in zip(rows["mean"], rows["sd"])]
        rows["cell"] = [f"{v} (NFE {nfe:.0f})" for v, nfe in zip(rows["value"], rows["nfe"])]
        wide = rows.pivot(index="method", columns="target_nfe", values="cell").fillna("")
        wide.columns = [f"target {c}" for c in wide.columns]
        lines += [f"`{metric}` (mean ± sd over seeds):", "", markdown_table(wide.reset_index()), ""]
    return lines


def _diffusion_outcome(name: str, metrics: pd.DataFrame) -> list[str]:
    """Is PMM at <= 80 NFE within the seed noise of DDPM-1000 (two of its seed sds), and
    better than DDPM at equal NFE?"""
    out = []
    for metric in ("mmd", "sliced_w2", "frechet"):
        rows = metrics[metrics["metric"] == metric].set_index(["method", "target_nfe"])
        if ("ddpm", 1000) not in rows.index:
            continue
        ref = rows.loc[("ddpm", 1000)]
        for nfe in sorted(t for m, t in rows.index if m == "pmm" and t <= 80):
            pmm = rows.loc[("pmm", nfe)]
            noise = 2 * float(np.nan_to_num(ref["sd"]))
            within = abs(pmm["mean"] - ref["mean"]) <= noise
            verdict = "within" if within else "outside"
            text = (
                f"- {name}, `{metric}`: PMM at {pmm['nfe']:.0f} NFE {_fmt(pmm['mean'])} "
                f"(seed sd {_fmt(pmm['sd'], 2)}) vs DDPM-1000 {_fmt(ref['mean'])}: {verdict} "
                f"two of DDPM-1000's seed sds ({_fmt(noise, 2)})"
            )
            if ("ddpm", nfe) in rows.index:
                ddpm = rows.loc[("ddpm", nfe)]
                better = "better" if pmm["mean"] < ddpm["mean"] else "worse"
                text += f"; {better} than DDPM at the same NFE ({_fmt(ddpm['mean'])})"
            out.append(text + ".")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run to test the pipeline")
    parser.add_argument("--build", default=str(ROOT / "build" / "compare-results"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    build, docs = Path(args.build), Path(args.docs)
    figures_dir = docs / "results"
    figures_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)

    commands, timings = [], {}
    mcmc_argv = [
        "mcmc", "--posterior", "all", "--out", str(build / "mcmc"), "--overwrite",
        *shlex.split(sizes["mcmc"]),
    ]  # fmt: skip
    timings["mcmc"] = _run(mcmc_argv)
    commands.append(mcmc_argv)
    diffusion = {}
    for testbed, options in sizes["diffusion"].items():
        argv = [
            "diffusion", "--testbed", testbed, "--out", str(build / f"diffusion-{testbed}"),
            "--overwrite", *shlex.split(options),
        ]  # fmt: skip
        timings[testbed] = _run(argv)
        commands.append(argv)
        diffusion[testbed] = pd.read_csv(build / f"diffusion-{testbed}" / "metrics.csv")

    summary = pd.read_csv(build / "mcmc" / "summary.csv")
    figures = {}
    for post in dict.fromkeys(summary["posterior"]):
        src = build / "mcmc" / post / "error_vs_grad.png"
        if src.exists():
            shutil.copyfile(src, figures_dir / f"mcmc_{post}.png")
            figures[post] = f"results/mcmc_{post}.png"
    for testbed in diffusion:
        shutil.copyfile(
            build / f"diffusion-{testbed}" / "metric_vs_nfe.png",
            figures_dir / f"diffusion_{testbed}.png",
        )

    cols = [
        "posterior",
        "sampler",
        "draws",
        "grad_evals",
        "max_abs_mean_err",
        "max_abs_sd_err",
        "min_ess_bulk_per_1k_grad",
        "max_r_hat",
        "divergences",
        "wall_time_s",
    ]
    print(summary[cols].to_string(index=False))
    for testbed, metrics in diffusion.items():
        print(testbed)
        print(metrics.to_string(index=False))

    lines = [
        "# Results: PMM against LMC and NUTS, and the diffusion samplers",
        "",
        f"Generated by `python benchmarks/bench_compare.py{' --quick' if args.quick else ''}` "
        f"on {started:%Y-%m-%d %H:%M} UTC, commit {_git_commit()}, {platform.machine()} "
        f"with {len(__import__('os').sched_getaffinity(0))} usable cores (shared with other "
        "jobs, so wall times are indicative only). Do not edit by hand: rerun the script.",
        "",
        "Commands run (full reports with every table and figure, and the traces as netCDF, "
        "are written under `build/compare-results/`, not committed):",
        "",
        "```",
        *("pmm-compare " + shlex.join(a) for a in commands),
        "```",
        "",
        "Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".",
        "",
        "## PyMC posteriors (posteriordb): PMM vs LMC at equal gradient budget, NUTS beside",
        "",
        f"PMM (`PoissonMidpoint`, K={_default_k()}, the default) ran the draws given; LMC "
        "(`LangevinMC`) and NUTS "
        "(`pm.NUTS`) got the same post-tuning gradient evaluations per chain, counted from "
        "each step's `n_steps` statistic. All chains of all samplers started from the same "
        "jittered points. Step sizes (and the preconditioners: dense for PMM and LMC at "
        "these sizes, diagonal for NUTS) were adapted during "
        "tuning by each sampler's default scheme. See docs/compare.md for the method.",
        "",
        *_treedepth_note(sizes["mcmc"], build / "mcmc"),
        *_mcmc_section(summary, figures),
        "## Diffusion samplers: the exact-score testbeds and the trained digits network",
        "",
        "Each metric compares the generated samples with as many exact samples (a fresh set "
        "per seed); lower is better for `mmd` and `sliced_w2`, `log_density_gap` should be 0 "
        "(negative: over-dispersed). PMM uses its default block layout at the target NFE; the "
        "other methods take one network call per step. DDPM-1000 is the reference the PMM "
        "claim is about. `digits-net` is the bundled trained ε-network, scored against the "
        "training digits (Fréchet distance on the bundled classifier's features); its floor is "
        "the 359 held-out test digits, whose small number inflates the floor's Fréchet "
        "distance. The sampler's own, larger benchmark is `benchmarks/bench_diffusion.py`.",
        "",
    ]
    outcome = []
    for testbed, metrics in diffusion.items():
        outcome += _diffusion_outcome(testbed, metrics)
    if outcome:
        lines += ["### Outcome (computed from the tables below)", "", *outcome, ""]
    for testbed, metrics in diffusion.items():
        lines += _diffusion_section(testbed, metrics, f"results/diffusion_{testbed}.png")
    (docs / "results.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {docs / 'results.md'}")


if __name__ == "__main__":
    main()
