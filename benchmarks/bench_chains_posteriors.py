"""Many chains on every bundled posterior: sample_chains against the reference draws (issue 11,
item 4).

For each bundled posteriordb posterior, ``sample_chains`` with ``--chains`` jittered chains at
the default settings (PMM, ``target_accept`` 0.9, ``precondition="auto"``, stray-chain
restarts on), and beside it ``pm.sample(step=PoissonMidpoint())`` with 4 chains given the same
number of gradient evaluations after tuning. Prints the worst mean error (in reference sd)
and the worst sd error (relative) over every scalar, from the library's
:func:`pmm_pymc.compare.diagnostics.reference_errors`, the chains restarted during warm-up,
and the divergent draws. The bar (the issue's): means within 0.1 reference sd and sds within
10 %. Run from the repository root::

    python benchmarks/bench_chains_posteriors.py            # ~15 minutes on 2 cores
    python benchmarks/bench_chains_posteriors.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import pymc as pm

from pmm_pymc.compare.diagnostics import gradient_evaluations, reference_errors
from pmm_pymc.evaluation.posteriors import list_posteriors, load_model, load_reference
from pmm_pymc.mcmc.chains import sample_chains
from pmm_pymc.mcmc.steps import PoissonMidpoint


def worst(idata, reference) -> tuple[float, float]:
    table = reference_errors(idata["posterior"].to_dataset(), reference)
    return float(table["mean_err"].abs().max()), float(table["sd_err"].abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chains", type=int, default=128)
    parser.add_argument("--posteriors", nargs="*", default=list(list_posteriors()))
    args = parser.parse_args(argv)
    tune, draws = (300, 200) if args.quick else (1000, 1000)
    print(
        f"## sample_chains on the bundled posteriors: {args.chains} chains, tune={tune}, "
        f"draws={draws}; pm.sample(PoissonMidpoint) with 4 chains at the same number of "
        "gradient evaluations after tuning\n"
    )
    print(
        "| posterior | sampler | worst mean err (ref sd) | worst sd err | restarted chains "
        "| divergent draws | grads after tuning | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.posteriors:
        model, reference = load_model(name), load_reference(name)
        t0 = time.perf_counter()
        idata = sample_chains(model, chains=args.chains, tune=tune, draws=draws, random_seed=1)
        seconds = time.perf_counter() - t0
        grads = float(gradient_evaluations(idata["sample_stats"].to_dataset()).sum())
        m, s = worst(idata, reference)
        restarted = int((idata["sample_stats"]["warmup_restarts"].values > 0).sum())
        div = int(idata["sample_stats"]["diverging"].values.sum())
        print(
            f"| {name} | sample_chains | {m:.3f} | {s:.3f} | {restarted} | {div} | "
            f"{grads:.3g} | {seconds:.1f} |",
            flush=True,
        )
        per_chain = math.ceil(grads / 4 / 1.75)  # PMM K=4 spends 1.75 gradients per draw
        t0 = time.perf_counter()
        with model, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_run = pm.sample(
                step=PoissonMidpoint(),
                chains=4,
                cores=2,
                tune=tune,
                draws=per_chain,
                random_seed=1,
                progressbar=False,
                compute_convergence_checks=False,
            )
        seconds = time.perf_counter() - t0
        grads = float(gradient_evaluations(ref_run["sample_stats"].to_dataset()).sum())
        m, s = worst(ref_run, reference)
        div = int(ref_run["sample_stats"]["diverging"].values.sum())
        print(
            f"| {name} | pm.sample PoissonMidpoint | {m:.3f} | {s:.3f} | | {div} | "
            f"{grads:.3g} | {seconds:.1f} |",
            flush=True,
        )
    print()
    print(f"Bar: worst mean error < 0.1 and worst sd error < 0.1. numpy {np.__version__}.")


if __name__ == "__main__":
    main()
