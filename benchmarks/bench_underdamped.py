"""Underdamped (kinetic) PMM beside the other samplers: bias and ESS per gradient (issue 9, item 5).

For each posterior (the seven bundled posteriordb posteriors and ``correlated_regression``,
a regression with a -0.99 intercept-slope correlation and an exact normal posterior,
:mod:`pmm_pymc.evaluation.regression`), the script prints one row per sampler:

* ``sample_chains`` with ``method="upmm"`` (underdamped PMM, K = 4), ``"ulmc"`` (underdamped
  LMC), ``"pmm"`` and ``"lmc"`` (overdamped), each at its defaults, ``--chains`` chains;
* PyMC's NUTS (``pm.sample()``, 4 chains) and nutpie (4 chains; benchmark environment only,
  skipped when it is not installed);

with the worst mean error over every scalar (in reference sd) and the worst sd error
(relative), from :func:`pmm_pymc.compare.diagnostics.reference_errors`, and the smallest bulk
ESS per 1000 post-tuning gradient evaluations (all chains), from
:func:`pmm_pymc.compare.diagnostics.variable_diagnostics`; gradients are the samplers'
``n_steps`` (:func:`~pmm_pymc.compare.diagnostics.gradient_evaluations`).

With ``--sweep`` each Langevin method also runs at fixed step sizes (the adapted step of its
default run times ``--multipliers``; friction and preconditioner still adapted), which traces
its bias against ESS per gradient; the matched-bias column is the ESS per 1000 gradients of
the largest step whose worst error ``max(|mean err|, |sd err|)`` is at most ``--bias``.

With ``--grid`` the script instead runs the grid the kinetic defaults were chosen from
(``docs/underdamped.md``): step adaptation to ``target_accept`` or to ``energy_var_target``,
``FRICTION_FACTOR`` and ``K``.

Run from the repository root (each posterior separately if you like)::

    .venv/bin/python benchmarks/bench_underdamped.py                    # ~30 min on 2 cores
    .venv/bin/python benchmarks/bench_underdamped.py --posteriors arK correlated_regression
    .venv/bin/python benchmarks/bench_underdamped.py --sweep --posteriors kidscore_momiq
    .venv/bin/python benchmarks/bench_underdamped.py --grid --posteriors arK
    .venv/bin/python benchmarks/bench_underdamped.py --quick            # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import ensure_nutpie, run_nutpie  # noqa: E402

from pmm_pymc.compare.diagnostics import (  # noqa: E402
    ExactMoments,
    gradient_evaluations,
    reference_errors,
    variable_diagnostics,
)
from pmm_pymc.evaluation.posteriors import list_posteriors, load_model, load_reference  # noqa: E402
from pmm_pymc.evaluation.regression import correlated_regression  # noqa: E402
from pmm_pymc.mcmc import warmup as warmup_module  # noqa: E402
from pmm_pymc.mcmc.chains import sample_chains  # noqa: E402

CORRELATED = "correlated_regression"
LANGEVIN = ("upmm", "ulmc", "pmm", "lmc")


def load(name: str) -> tuple[pm.Model, Any]:
    """The model and its reference (posteriordb draws, or exact moments)."""
    if name != CORRELATED:
        return load_model(name), load_reference(name)
    problem = correlated_regression()
    names = ("intercept", "slope")
    mean = xr.Dataset({n: ((), problem.mean[i]) for i, n in enumerate(names)})
    sd = xr.Dataset({n: ((), problem.sd[i]) for i, n in enumerate(names)})
    return problem.model, ExactMoments(mean, sd)


def score(idata: Any, reference: Any) -> dict[str, float]:
    """Worst mean and sd errors, and min bulk ESS per 1000 post-tuning gradients."""
    post = idata["posterior"].to_dataset()
    grads = float(gradient_evaluations(idata["sample_stats"].to_dataset()).sum())
    err = reference_errors(post, reference)
    diag = variable_diagnostics(post, var_names=list(err["variable"].unique()), grad_evals=grads)
    stats = idata["sample_stats"]
    out = {
        "mean_err": float(err["mean_err"].abs().max()),
        "sd_err": float(err["sd_err"].abs().max()),
        "ess_per_1k_grad": float(diag["ess_bulk_per_1k_grad"].min()),
        "grads": grads,
        "draws": int(post.sizes["chain"] * post.sizes["draw"]),
        "divergent": int(stats["diverging"].values.sum()) if "diverging" in stats else 0,
    }
    if "step_size" in stats:
        out["step_size"] = float(np.nanmedian(stats["step_size"].values))
    if "friction" in stats:
        out["friction"] = float(np.nanmedian(stats["friction"].values))
    return out


def run_langevin(
    model: pm.Model, method: str, chains: int, tune: int, draws: int, seed: int, **options: Any
) -> tuple[Any, float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = sample_chains(
            model,
            chains=chains,
            tune=tune,
            draws=draws,
            method=method,
            random_seed=seed,
            compute_convergence_checks=False,
            **options,
        )
    return idata, time.perf_counter() - t0


def run_nuts(model: pm.Model, tune: int, draws: int, seed: int) -> tuple[Any, float]:
    t0 = time.perf_counter()
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample(
            chains=4,
            cores=2,
            tune=tune,
            draws=draws,
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
            nuts_sampler="pymc",
        )
    return idata, time.perf_counter() - t0


def fmt_row(name: str, sampler: str, result: dict[str, Any]) -> str:
    step = result.get("step_size")
    friction = result.get("friction")
    return (
        f"| {name} | {sampler} | {result['mean_err']:.3f} | {result['sd_err']:.3f} | "
        f"{result['ess_per_1k_grad']:.1f} | {'' if step is None else f'{step:.3g}'} | "
        f"{'' if friction is None else f'{friction:.3g}'} | {result['divergent']} | "
        f"{result['seconds']:.0f} |"
    )


def unstable(result: dict[str, Any]) -> bool:
    """More than 1 % of the draws divergent: the step is past the stability limit."""
    return result["divergent"] > 0.01 * result["draws"]


def matched_bias(points: list[dict[str, Any]], bias: float) -> dict[str, Any] | None:
    """The sweep point of largest step whose worst error is at most ``bias``."""
    ok = [p for p in points if max(p["mean_err"], p["sd_err"]) <= bias and not unstable(p)]
    return max(ok, key=lambda p: p["step_size"]) if ok else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--posteriors", nargs="*", default=[*list_posteriors(), CORRELATED], metavar="NAME"
    )
    parser.add_argument("--chains", type=int, default=32)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--nuts-draws", type=int, default=1000, help="NUTS/nutpie tune and draws")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--precondition",
        default="auto",
        choices=("auto", "diag", "dense"),
        help="sample_chains' preconditioner (a label suffix when not auto)",
    )
    parser.add_argument("--no-nuts", action="store_true", help="skip pm.sample NUTS and nutpie")
    parser.add_argument("--methods", nargs="*", default=list(LANGEVIN), choices=LANGEVIN)
    parser.add_argument("--sweep", action="store_true", help="also the fixed-step sweep")
    parser.add_argument("--multipliers", nargs="*", type=float, default=[0.5, 1.5, 2.5])
    parser.add_argument("--bias", type=float, default=0.05)
    parser.add_argument("--grid", action="store_true", help="the grid behind the defaults")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=str, default=None, help="append results to this file")
    parser.add_argument(
        "--report", nargs="*", default=None, metavar="JSONL", help="only tabulate saved results"
    )
    parser.add_argument("--plot", type=str, default=None, help="with --report: a PNG figure")
    args = parser.parse_args(argv)
    if args.report is not None:
        records = [json.loads(line) for path in args.report for line in open(path) if line.strip()]
        report(records, args.bias)
        if args.plot:
            plot(records, args.plot, args.bias)
        return
    if args.quick:
        args.chains, args.tune, args.draws, args.nuts_draws = 8, 200, 200, 200
    records: list[dict[str, Any]] = []
    logging.getLogger("pymc").setLevel(logging.ERROR)  # sample_chains' restart notes, NUTS' lines

    def record(**row: Any) -> None:
        records.append(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")

    print(
        f"## {args.chains} chains x {args.draws} draws ({args.tune} tuning) for sample_chains; "
        f"NUTS and nutpie 4 chains x {args.nuts_draws} draws ({args.nuts_draws} tuning); "
        f"seed {args.seed}\n"
    )
    header = (
        "| posterior | sampler | worst mean err (ref sd) | worst sd err | min ESS / 1k grad "
        "| step | friction | divergent | seconds |\n|---|---|---|---|---|---|---|---|---|"
    )
    print(header, flush=True)
    nutpie = None if (args.no_nuts or args.grid) else ensure_nutpie(install=False)
    for name in args.posteriors:
        model, reference = load(name)
        if args.grid:
            grid(name, model, reference, args, record)
            continue
        options = {} if args.precondition == "auto" else {"precondition": args.precondition}
        if options:
            name = f"{name} ({args.precondition})"
        for method in args.methods:
            idata, seconds = run_langevin(
                model, method, args.chains, args.tune, args.draws, args.seed, **options
            )
            result = {**score(idata, reference), "seconds": seconds}
            record(posterior=name, sampler=method, kind="default", **result)
            print(fmt_row(name, f"sample_chains {method}", result), flush=True)
            if args.sweep:
                for mult in args.multipliers:
                    step = result["step_size"] * mult
                    idata, seconds = run_langevin(
                        model,
                        method,
                        args.chains,
                        args.tune,
                        args.draws,
                        args.seed,
                        step_size=step,
                        adapt_step_size=False,
                        **options,
                    )
                    swept = {**score(idata, reference), "seconds": seconds}
                    record(posterior=name, sampler=method, kind="sweep", multiplier=mult, **swept)
                    print(fmt_row(name, f"{method} fixed step x{mult:g}", swept), flush=True)
        if args.no_nuts:
            continue
        idata, seconds = run_nuts(model, args.nuts_draws, args.nuts_draws, args.seed)
        result = {**score(idata, reference), "seconds": seconds}
        record(posterior=name, sampler="nuts", kind="default", **result)
        print(fmt_row(name, "pm.sample NUTS", result), flush=True)
        if nutpie is not None:
            compiled = nutpie.compile_pymc_model(model)
            idata, seconds = run_nutpie(
                nutpie, compiled, args.nuts_draws, args.nuts_draws, args.seed, chains=4
            )
            result = {**score(idata, reference), "seconds": seconds}
            record(posterior=name, sampler="nutpie", kind="default", **result)
            print(fmt_row(name, "nutpie", result), flush=True)
    if args.sweep and not args.grid:
        summarize_sweep(records, args.bias)


def summarize_sweep(records: list[dict[str, Any]], bias: float) -> None:
    print(f"\n### At matched bias: worst error <= {bias}\n")
    print("| posterior | sampler | step | worst mean err | worst sd err | min ESS / 1k grad |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(r["posterior"], r["sampler"]) for r in records if r["sampler"] in LANGEVIN})
    for name, sampler in keys:
        points = [r for r in records if (r["posterior"], r["sampler"]) == (name, sampler)]
        best = matched_bias(points, bias)
        if best is None:
            print(f"| {name} | {sampler} | none of the steps | | | |")
            continue
        print(
            f"| {name} | {sampler} | {best['step_size']:.3g} | {best['mean_err']:.3f} | "
            f"{best['sd_err']:.3f} | {best['ess_per_1k_grad']:.1f} |"
        )


def report(records: list[dict[str, Any]], bias: float) -> None:
    """The targets' table from saved results: upmm at its defaults against NUTS and LMC."""
    default = {(r["posterior"], r["sampler"]): r for r in records if r["kind"] == "default"}
    names = list(dict.fromkeys(r["posterior"] for r in records))
    print(
        "| posterior | upmm worst mean err | upmm worst sd err | upmm ESS/1k grad | "
        "ulmc | pmm | lmc | NUTS | nutpie | upmm / NUTS | upmm / lmc | bias target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        row = {k: default.get((name, k)) for k in ("upmm", "ulmc", "pmm", "lmc", "nuts", "nutpie")}
        ess = {k: (v["ess_per_1k_grad"] if v else float("nan")) for k, v in row.items()}
        up = row["upmm"]
        if up is None:
            continue
        met = up["mean_err"] <= 0.05 and up["sd_err"] <= 0.05
        print(
            f"| {name} | {up['mean_err']:.3f} | {up['sd_err']:.3f} | {ess['upmm']:.1f} | "
            f"{ess['ulmc']:.1f} | {ess['pmm']:.1f} | {ess['lmc']:.1f} | {ess['nuts']:.1f} | "
            f"{ess['nutpie']:.1f} | {ess['upmm'] / ess['nuts']:.2f}x | "
            f"{ess['upmm'] / ess['lmc']:.2f}x | {'met' if met else 'missed'} |"
        )
    summarize_sweep(records, bias)


def plot(records: list[dict[str, Any]], path: str, bias: float) -> None:
    """One panel per posterior: min ESS per 1000 gradients against the worst error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(r["posterior"] for r in records))
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    colors = {"upmm": "C0", "ulmc": "C1", "pmm": "C2", "lmc": "C3", "nuts": "k", "nutpie": "0.5"}
    for ax, name in zip(axes.flat, names):
        for sampler, color in colors.items():
            points = [
                r
                for r in records
                if r["posterior"] == name
                and r["sampler"] == sampler
                and r["kind"] != "grid"
                and not unstable(r)
            ]
            if not points:
                continue
            points.sort(key=lambda r: r.get("step_size", 0.0))
            err = [max(r["mean_err"], r["sd_err"]) for r in points]
            ess = [r["ess_per_1k_grad"] for r in points]
            style = "o-" if sampler in LANGEVIN else "s"
            ax.plot(err, ess, style, color=color, label=sampler, ms=4)
            for r, e, y in zip(points, err, ess):
                if r["kind"] == "default" and sampler in LANGEVIN:
                    ax.plot(e, y, "*", color=color, ms=11)
        ax.axvline(bias, color="0.7", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("worst error (max of mean err, sd err)", fontsize=8)
        ax.set_ylabel("min ESS / 1000 gradients", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        "Fixed-step sweeps (lines) and defaults (stars); NUTS, nutpie: squares; "
        "runs with over 1 % divergent draws left out"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def grid(name: str, model: pm.Model, reference: Any, args: Any, record: Any) -> None:
    """The grid the kinetic defaults were chosen from."""
    default = warmup_module.FRICTION_FACTOR
    settings: list[tuple[str, str, dict[str, Any], float]] = []
    criteria = [("ta=0.8", {"target_accept": 0.8}), ("ta=0.9", {"target_accept": 0.9})]
    criteria += [("ta=0.95", {"target_accept": 0.95})]
    criteria += [("ev=5e-4", {"energy_var_target": 5e-4}), ("ev=2e-3", {"energy_var_target": 2e-3})]
    for label, options in criteria:  # how the step adapts, at the default friction factor
        settings.append(("upmm", f"{label} f={default:g}", options, default))
    for factor in (0.5, 2.0):  # the friction factor
        settings.append(("upmm", f"ta=0.9 f={factor:g}", {"target_accept": 0.9}, factor))
    for K in (2, 8):
        settings.append(("upmm", f"ta=0.9 K={K}", {"target_accept": 0.9, "K": K}, default))
    for label, options in criteria[:4]:
        settings.append(("ulmc", f"{label} f={default:g}", options, default))
    original = warmup_module.FRICTION_FACTOR
    try:
        for method, label, options, factor in settings:
            warmup_module.FRICTION_FACTOR = original if factor is None else factor
            idata, seconds = run_langevin(
                model, method, args.chains, args.tune, args.draws, args.seed, **options
            )
            result = {**score(idata, reference), "seconds": seconds}
            record(posterior=name, sampler=method, kind="grid", label=label, **result)
            print(fmt_row(name, f"{method} {label}", result), flush=True)
    finally:
        warmup_module.FRICTION_FACTOR = original


if __name__ == "__main__":
    main()
