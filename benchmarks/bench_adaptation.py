"""The preconditioner adaptation of PMM and LMC on correlated, far-started posteriors.

For each posterior, each step (PoissonMidpoint, LangevinMC) and each ``precondition``
("diag", "dense"), ``pm.sample`` runs 4 chains of ``--tune`` tuning and ``--draws`` draws
from the jittered starting points ``pmm-compare`` uses (``jittered_initvals``, the same
seed), and the script prints

* the divergent draws of each chain, while tuning and after;
* the frozen step size of each chain;
* the largest ``|mean - ref_mean| / ref_sd`` over every scalar of the reference (free
  variables and deterministics), the largest R-hat and the smallest bulk ESS over those.

Run (about a minute on 2 shared cores for the default posteriors)::

    .venv/bin/python benchmarks/bench_adaptation.py
    .venv/bin/python benchmarks/bench_adaptation.py --posteriors kidscore_momiq arK diamonds
"""

from __future__ import annotations

import argparse
import time
import warnings

import arviz as az
import numpy as np
import pymc as pm

from pmm_pymc.compare.mcmc import jittered_initvals
from pmm_pymc.evaluation.posteriors import load_model, load_reference
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

DIMS = ("chain", "draw")


def summarise(idata, reference) -> tuple[float, float, float]:
    """Largest mean error (reference-sd units), largest R-hat, smallest bulk ESS."""
    ref, post = reference["posterior"], idata["posterior"]
    names = [str(v) for v in ref.data_vars]
    rhat, ess = az.rhat(idata, var_names=names), az.ess(idata, var_names=names)
    err = max(
        float((np.abs(post[v].mean(DIMS) - ref[v].mean(DIMS)) / ref[v].std(DIMS)).max())
        for v in names
    )
    return err, max(float(rhat[v].max()) for v in names), min(float(ess[v].min()) for v in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", nargs="+", default=["kidscore_momiq", "arK"])
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    print(
        f"{args.chains} chains x ({args.tune} tune + {args.draws} draws), jittered starts, "
        f"seed {args.seed}\n"
    )
    header = (
        f"{'posterior':16s} {'step':4s} {'precond':7s} {'div tune':>14s} {'div after':>16s} "
        f"{'eta (per chain)':>28s} {'mean err':>8s} {'R-hat':>6s} {'ESS':>6s} {'wall':>6s}"
    )
    print(header)
    for name in args.posteriors:
        model, reference = load_model(name), load_reference(name)
        initvals = jittered_initvals(model, args.chains, args.seed)
        for label, cls in (("PMM", PoissonMidpoint), ("LMC", LangevinMC)):
            for precondition in ("diag", "dense"):
                t0 = time.perf_counter()
                with model:
                    idata = pm.sample(
                        draws=args.draws,
                        tune=args.tune,
                        chains=args.chains,
                        cores=1,
                        step=cls(precondition=precondition),
                        initvals=initvals,
                        random_seed=args.seed,
                        progressbar=False,
                        quiet=True,
                        compute_convergence_checks=False,
                        discard_tuned_samples=False,
                    )
                wall = time.perf_counter() - t0
                err, rhat, ess = summarise(idata, reference)
                div_tune = idata["warmup_sample_stats"]["diverging"].values.sum(axis=1)
                div = idata["sample_stats"]["diverging"].values.sum(axis=1)
                eta = idata["sample_stats"]["step_size"].values[:, 0]
                print(
                    f"{name:16s} {label:4s} {precondition:7s} {str(div_tune.tolist()):>14s} "
                    f"{str(div.tolist()):>16s} {np.array2string(eta, precision=3):>28s} "
                    f"{err:8.3f} {rhat:6.3f} {ess:6.0f} {wall:6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
