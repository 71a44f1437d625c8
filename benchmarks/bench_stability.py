"""Stability of PoissonMidpoint and LangevinMC at every target_accept and K (issue 8, item 3).

Two sections, both with the per-chain PyMC steps run by ``pm.sample`` (4 chains, one core):

1. ``scan``: the time-series posteriors with a ``pytensor.scan`` recursion of
   :mod:`pmm_pymc.evaluation.timeseries` (GARCH(1,1) and ARMA(1,1) on 200 simulated
   observations), LMC and PMM with K = 2, 4, 8 at ``target_accept`` 0.5, 0.6, 0.75, 0.9,
   0.99, against a NUTS reference run in the same script (2 chains x 2500 draws at
   ``target_accept=0.95``). Per setting: divergent draws, chains flagged as having left the
   bulk (the ``left_bulk`` stat), how many chains' final step the stability cap set, and
   the worst *per-chain* mean error and sd ratio against the reference over every scalar (a
   chain that wandered off shows as an sd ratio far from 1 even when the pooled draws hide it).
2. ``bundled``: the bundled posteriordb posteriors at ``target_accept`` 0.5 and 0.99,
   PoissonMidpoint (K = 4) and LangevinMC, against their reference draws.

Errors come from :func:`pmm_pymc.compare.diagnostics.reference_errors`. All steps of a model
share one compiled log density (``logp_dlogp_func``), so a setting costs only its draws. Run
from the repository root::

    python benchmarks/bench_stability.py                 # ~25 minutes on 2 busy cores
    python benchmarks/bench_stability.py --quick         # a smoke run
    python benchmarks/bench_stability.py --sections scan --models arma
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import pymc as pm

from pmm_pymc.compare.diagnostics import reference_errors
from pmm_pymc.evaluation.posteriors import list_posteriors, load_model, load_reference
from pmm_pymc.evaluation.timeseries import arma11_model, garch11_model
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

TARGETS = (0.5, 0.6, 0.75, 0.9, 0.99)
METHODS = ((1, "LMC"), (2, "PMM K=2"), (4, "PMM K=4"), (8, "PMM K=8"))
SCAN_MODELS = {"garch11": garch11_model, "arma11": arma11_model}


def shared_function(model: pm.Model) -> Any:
    fn = model.logp_dlogp_function(ravel_inputs=True)
    fn.trust_input = True
    return fn


def run(model: pm.Model, fn: Any, K: int, target: float, tune: int, draws: int, seed: int):
    """``pm.sample`` with 4 chains of the step (K = 1: LangevinMC) on the shared function."""
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"target_accept": target, "logp_dlogp_func": fn}
        step = LangevinMC(**kw) if K == 1 else PoissonMidpoint(K=K, **kw)
        idata = pm.sample(
            step=step,
            tune=tune,
            draws=draws,
            chains=4,
            cores=1,
            progressbar=False,
            compute_convergence_checks=False,
            random_seed=seed,
        )
    return idata


def summarise(idata: Any, reference: Any) -> dict[str, Any]:
    post = idata["posterior"].to_dataset()
    stats = idata["sample_stats"]
    per_chain = [
        reference_errors(post.isel(chain=[c]), reference) for c in range(post.sizes["chain"])
    ]
    ratio = np.array([1.0 + t["sd_err"].to_numpy() for t in per_chain])  # chain sd / ref sd
    mean_err = np.array([np.abs(t["mean_err"].to_numpy()) for t in per_chain])
    pooled = reference_errors(post, reference)
    step = stats["step_size"].values[:, -1]
    return {
        "div": float(stats["diverging"].values.mean()),
        "left": int(stats["left_bulk"].values.any(axis=1).sum()),
        "step": (float(step.min()), float(step.max())),
        "chain_mean": float(mean_err.max()),
        "chain_sd": (float(ratio.min()), float(ratio.max())),
        "mean": float(pooled["mean_err"].abs().max()),
        "sd": float(pooled["sd_err"].abs().max()),
    }


def row(name: str, method: str, target: float, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {method} | {target} | {100 * s['div']:.1f} | {s['left']} | "
        f"{s['step'][0]:.3g}–{s['step'][1]:.3g} | {s['chain_mean']:.2f} | "
        f"{s['chain_sd'][0]:.2f}–{s['chain_sd'][1]:.2f} | {s['mean']:.3f} | {s['sd']:.3f} |"
    )


HEADER = (
    "| posterior | sampler | target | divergent % | chains left bulk | final steps | "
    "worst chain mean err (ref sd) | chain sd / ref sd | pooled worst mean err | "
    "pooled worst sd err |\n|---|---|---|---|---|---|---|---|---|---|"
)


def bench_scan(models: list[str], quick: bool) -> None:
    tune, draws = (200, 200) if quick else (500, 500)
    print(f"## 1. Scan models: 4 chains, tune={tune}, draws={draws} per setting\n")
    print(HEADER)
    for name in models:
        model = SCAN_MODELS[name]()
        t0 = time.perf_counter()
        with model, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pm.sample(
                tune=500 if quick else 1000,
                draws=500 if quick else 2500,
                chains=2,
                cores=1,
                target_accept=0.95,
                progressbar=False,
                compute_convergence_checks=False,
                random_seed=7,
            )
        n_div = int(reference["sample_stats"]["diverging"].values.sum())
        print(f"  ({name}: NUTS reference {time.perf_counter() - t0:.0f} s, {n_div} divergent)")
        fn = shared_function(model)
        for K, method in METHODS:
            for target in TARGETS:
                idata = run(model, fn, K, target, tune, draws, seed=1)
                print(row(name, method, target, summarise(idata, reference)), flush=True)
    print()


def bench_bundled(posteriors: list[str], quick: bool) -> None:
    tune, draws = (200, 200) if quick else (500, 500)
    print(f"## 2. Bundled posteriors: 4 chains, tune={tune}, draws={draws}\n")
    print(HEADER)
    for name in posteriors:
        model, reference = load_model(name), load_reference(name)
        fn = shared_function(model)
        for K, method in ((1, "LMC"), (4, "PMM K=4")):
            for target in (0.5, 0.99):
                idata = run(model, fn, K, target, tune, draws, seed=1)
                print(row(name, method, target, summarise(idata, reference)), flush=True)
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["scan", "bundled"])
    parser.add_argument("--models", nargs="+", default=list(SCAN_MODELS))
    parser.add_argument("--posteriors", nargs="+", default=list(list_posteriors()))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("pymc").setLevel(logging.ERROR)
    print("# bench_stability\n")
    print(f"load average at start {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    t0 = time.perf_counter()
    if "scan" in args.sections:
        bench_scan(args.models, args.quick)
    if "bundled" in args.sections:
        bench_bundled(args.posteriors, args.quick)
    print(f"(bench_stability took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
