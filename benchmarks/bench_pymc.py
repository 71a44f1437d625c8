"""PMM vs LMC vs NUTS on posteriordb posteriors, at the same number of gradient evaluations.

For each posterior and each target of the step-size adaptation, PoissonMidpoint and
LangevinMC run with the same post-tuning budget of gradient evaluations per chain (LMC: one
per draw; PMM: ``2 - 1/K`` on average, so fewer draws). The script prints

* the error against the posteriordb reference draws, in reference-sd units: the largest and
  the root-mean-square over all scalar quantities (free variables and deterministics) of
  ``|mean - ref_mean| / ref_sd`` and of ``|sd - ref_sd| / ref_sd``;
* the gradient evaluations per effective sample (sum of ``n_steps`` / min bulk ESS);
* the wall time per gradient evaluation of each step, beside pm.NUTS on the same model
  (NUTS's gradient evaluations are its ``tree_size``), all sampled sequentially on one core.

Run (takes a few minutes; run it on a quiet machine, timings are wall clock)::

    .venv/bin/python benchmarks/bench_pymc.py
    .venv/bin/python benchmarks/bench_pymc.py --budget 20000 --chains 4 --targets 0.8 0.9 0.95
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pymc as pm

from pmm_pymc.compare.diagnostics import reference_errors, variable_diagnostics
from pmm_pymc.evaluation.posteriors import load_model, load_reference
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

DIMS = ("chain", "draw")


def errors(idata, reference) -> tuple[float, float, float, float, float]:
    """Max and RMS over scalars of the mean and sd errors in reference-sd units.

    The errors are the library's (:func:`pmm_pymc.compare.diagnostics.reference_errors`);
    the fifth number is the RMS of the Monte-Carlo standard error of the means (ArviZ,
    through :func:`~pmm_pymc.compare.diagnostics.variable_diagnostics`, in reference-sd
    units): the mean errors cannot be expected to be much below it.
    """
    post = idata["posterior"].to_dataset()
    table = reference_errors(post, reference)
    diag = variable_diagnostics(post, var_names=list(table["variable"].unique()))
    m, s = np.abs(table["mean_err"].to_numpy()), np.abs(table["sd_err"].to_numpy())
    n = diag["mcse_mean"].to_numpy() / table["ref_sd"].to_numpy()
    rms = lambda v: float(np.sqrt(np.mean(v**2)))  # noqa: E731
    return m.max(), rms(m), s.max(), rms(s), rms(n)


def min_ess(idata) -> float:
    return float(variable_diagnostics(idata["posterior"].to_dataset())["ess_bulk"].min())


def run(model, step, draws, tune, chains, seed):
    with model:
        t0 = time.perf_counter()
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            cores=1,
            step=step,
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
            discard_tuned_samples=False,
        )
        wall = time.perf_counter() - t0
    return idata, wall


def grads(idata, group: str) -> np.ndarray:
    ss = idata[group]
    name = "n_steps" if "n_steps" in ss else "tree_size"
    return ss[name].values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--posteriors", nargs="+", default=["low_dim_gauss_mix", "eight_schools_noncentered"]
    )
    parser.add_argument("--budget", type=int, default=10000, help="gradient evals per chain")
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    pmm_draws = int(round(args.budget / (2 - 1 / args.K)))
    print(
        f"budget {args.budget} gradient evaluations per chain after {args.tune} tuning draws, "
        f"{args.chains} chains; PMM K={args.K} ({pmm_draws} draws), LMC ({args.budget} draws)"
    )
    header = (
        f"{'posterior':<27}{'step':<6}{'target':>7}{'eta':>8}{'grads':>8}{'div':>5}"
        f"{'mean max':>10}{'mean rms':>10}{'mcse rms':>10}{'sd max':>8}{'sd rms':>8}"
        f"{'grad/ESS':>10}{'us/grad':>9}"
    )
    for name in args.posteriors:
        model, reference = load_model(name), load_reference(name)
        print()
        print(header)
        nuts_idata, nuts_wall = run(model, pm.NUTS(model=model), 1000, 1000, 1, args.seed)
        n_grad = (
            grads(nuts_idata, "sample_stats").sum() + grads(nuts_idata, "warmup_sample_stats").sum()
        )
        print(
            f"{name:<27}{'NUTS':<6}{'':>7}{'':>8}{n_grad:>8.0f}{'':>5}{'':>10}{'':>10}"
            f"{'':>8}{'':>8}{'':>10}{1e6 * nuts_wall / n_grad:>9.1f}"
        )
        for target in args.targets:
            for cls, draws, kw in (
                (PoissonMidpoint, pmm_draws, {"K": args.K}),
                (LangevinMC, args.budget, {}),
            ):
                step = cls(model=model, target_accept=target, **kw)
                idata, wall = run(model, step, draws, args.tune, args.chains, args.seed)
                post_grads = grads(idata, "sample_stats")
                all_grads = post_grads.sum() + grads(idata, "warmup_sample_stats").sum()
                m_max, m_rms, s_max, s_rms, noise = errors(idata, reference)
                eta = idata["sample_stats"]["step_size"].values[:, 0].mean()
                n_div = int(idata["sample_stats"]["diverging"].values.sum())
                per_chain = post_grads.sum() / args.chains
                print(
                    f"{name:<27}{cls.name.upper():<6}{target:>7.2f}{eta:>8.3f}"
                    f"{per_chain:>8.0f}{n_div:>5}{m_max:>10.3f}{m_rms:>10.3f}{noise:>10.3f}"
                    f"{s_max:>8.3f}"
                    f"{s_rms:>8.3f}{post_grads.sum() / min_ess(idata):>10.1f}"
                    f"{1e6 * wall / all_grads:>9.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
