"""Accuracy as the knob (issue 8, item 2): does ``accuracy=a`` give a bias of about ``a``?

For each posterior, method (LMC, PMM with K sub-steps) and requested accuracy ``a`` (the
tolerated relative error of the posterior sds), one long :func:`pmm_pymc.mcmc.sample_chains`
run with ``accuracy=a``: many chains, a full warm-up, then many draws, so that the bias of
the unadjusted chain stands above the Monte-Carlo error. Prints per run the worst mean error
(in reference sd) and the worst sd error (relative) over every scalar, from the library's
:func:`pmm_pymc.compare.diagnostics.reference_errors`, the median adapted step size, the
gradient evaluations per effective sample (the smallest bulk ESS over the scalars,
:func:`arviz_stats.ess`) and the ratio of PMM's to LMC's.

The posteriors are split: the calibration set (``kidscore_momiq``, ``arK``,
``low_dim_gauss_mix``) is where :data:`pmm_pymc.mcmc.warmup.ACCURACY_SCALE` was chosen,
the validation set (``diamonds``, ``blr``, ``eight_schools_noncentered``,
``gp_pois_regr`` and a 10-dimensional correlated Gaussian with exact moments) only checks
it. The noise floor of each posterior (what a perfect sampler would show as its worst error,
from the reference's own Monte-Carlo error: about ``2.5 / sqrt(ESS_ref)`` in the mean and
``2.5 / sqrt(2 ESS_ref)`` in the sd, ``ESS_ref`` the smallest bulk ESS of the reference
draws) is printed beside it; the correlated Gaussian has none. Run from the repository
root::

    python benchmarks/bench_accuracy.py                      # ~1 hour on 2 busy cores
    python benchmarks/bench_accuracy.py --quick              # a smoke run
    python benchmarks/bench_accuracy.py --posteriors corr_gauss --accuracy 0.05
    python benchmarks/bench_accuracy.py --gaussian           # the exact-Gaussian check only

``--gaussian`` prints the statistic against the exact stationary sd bias of LMC and PMM(K)
on ``N(0, I_16)`` (rows started at the exact stationary law; the exact variance is the
enumeration over the firing patterns of ``tests/test_core.py``, the oracle the tests use),
with the would-be MALA acceptance beside it.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import arviz_stats as azs
import numpy as np
import pymc as pm
import xarray as xr

from pmm_pymc.compare.diagnostics import (
    ExactMoments,
    gradient_evaluations,
    reference_errors,
)
from pmm_pymc.evaluation.posteriors import load_model, load_reference
from pmm_pymc.mcmc.chains import sample_chains
from pmm_pymc.mcmc.kernel import LangevinParams, LangevinState, Metric, draw, transition
from pmm_pymc.mcmc.warmup import bias_terms

CALIBRATION = ("kidscore_momiq", "arK", "low_dim_gauss_mix")
VALIDATION = ("diamonds", "blr", "eight_schools_noncentered", "gp_pois_regr", "corr_gauss")


def corr_gauss(d: int = 10, seed: int = 0) -> tuple[pm.Model, ExactMoments]:
    """``N(mu, Sigma)`` with sds from 0.1 to 10 and correlations up to about 0.9."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    corr = q @ np.diag(np.geomspace(0.05, 3.0, d)) @ q.T
    corr /= np.sqrt(np.outer(np.diag(corr), np.diag(corr)))
    sd = np.geomspace(0.1, 10.0, d)
    mu = rng.standard_normal(d)
    with pm.Model(coords={"i": np.arange(d)}) as model:
        pm.MvNormal("x", mu=mu, cov=corr * np.outer(sd, sd), dims="i")
    exact = ExactMoments(
        mean=xr.Dataset({"x": ("i", mu)}, coords={"i": np.arange(d)}),
        sd=xr.Dataset({"x": ("i", sd)}, coords={"i": np.arange(d)}),
    )
    return model, exact


def min_ess(draws: xr.Dataset) -> float:
    """The smallest bulk ESS over every scalar (:func:`arviz_stats.ess`)."""
    ess = azs.ess(draws, method="bulk")
    return float(min(np.min(ess[v].values) for v in ess.data_vars))


def target(name: str) -> tuple[pm.Model, object, float, float]:
    """Model, reference and the reference's noise floor (worst mean error, worst sd error)."""
    if name == "corr_gauss":
        model, exact = corr_gauss()
        return model, exact, 0.0, 0.0
    model, reference = load_model(name), load_reference(name)
    ess = min_ess(reference["posterior"].to_dataset())
    return model, reference, 2.5 / math.sqrt(ess), 2.5 / math.sqrt(2 * ess)


def run(model, reference, method: str, K: int | None, accuracy: float, args) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = sample_chains(
            model,
            chains=args.chains,
            tune=args.tune,
            draws=args.draws,
            method=method,
            K=K,
            accuracy=accuracy,
            random_seed=args.seed,
            compute_convergence_checks=False,
        )
    posterior = idata["posterior"].to_dataset()
    stats = idata["sample_stats"].to_dataset()
    table = reference_errors(posterior, reference)
    grads = float(gradient_evaluations(stats).sum())
    ref = reference if isinstance(reference, ExactMoments) else reference["posterior"]
    ess = min_ess(posterior[list(ref.data_vars)])
    return {
        "mean": float(table["mean_err"].abs().max()),
        "sd": float(table["sd_err"].abs().max()),
        "step": float(np.median(stats["step_size"].values)),
        "grad_per_ess": grads / ess,
        "divergent": int(stats["diverging"].values.sum()),
        "seconds": time.perf_counter() - t0,
    }


def gaussian_table(d: int = 16, rows: int = 2000, n_iter: int = 10) -> None:
    """The bias statistic against the exact sd bias on ``N(0, I_d)``, ``M = I``."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_core import exact_stationary_variance

    def logp_grad(x):
        return -0.5 * np.sum(x * x, axis=1), -x

    print("| eta | K | exact sd bias | predicted | fine term | midpoint term | would-be accept |")
    print("|---|---|---|---|---|---|---|")
    for eta in (0.1, 0.2, 0.4):
        for K in (1, 2, 4, 8):
            rng = np.random.default_rng(K)
            var = exact_stationary_variance(eta, K)
            x = rng.standard_normal((rows, d)) * np.sqrt(var)
            state = LangevinState(x, *logp_grad(x))
            params = LangevinParams(eta, K, Metric.identity())
            fine, spread, accept = [], [], []
            for _ in range(n_iter):
                state, info = transition(
                    logp_grad, draw(rng, K, rows, d, adjust=False), state, params
                )
                f, s = bias_terms(info, eta, d)
                fine.append(f.mean())
                spread.append(s.mean())
                accept.append(info.accept_prob.mean())
            f, s = math.sqrt(np.mean(fine)), float(np.mean(spread))
            print(
                f"| {eta} | {K} | {math.sqrt(var) - 1:.4f} | {f + s:.4f} | {f:.4f} | {s:.4f} "
                f"| {np.mean(accept):.3f} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gaussian", action="store_true", help="the exact-Gaussian check only")
    parser.add_argument("--posteriors", nargs="*", default=list(CALIBRATION + VALIDATION))
    parser.add_argument("--accuracy", nargs="*", type=float, default=[0.1, 0.05, 0.02])
    parser.add_argument("--K", nargs="*", type=int, default=[4], help="PMM sub-steps")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.gaussian:
        gaussian_table()
        return
    if args.quick:
        args.chains, args.tune, args.draws = 16, 300, 300
    print(
        f"## accuracy=a with sample_chains: {args.chains} chains, tune={args.tune}, "
        f"draws={args.draws}, seed {args.seed}\n"
    )
    print(
        "| posterior | set | a | method | step | worst mean err | worst sd err "
        "| grad/ESS | PMM/LMC grad/ESS | divergent | floor (mean, sd) | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    methods = [("lmc", None)] + [("pmm", k) for k in args.K]
    for name in args.posteriors:
        model, reference, floor_mean, floor_sd = target(name)
        role = "calibration" if name in CALIBRATION else "validation"
        for a in args.accuracy:
            lmc_cost = math.nan
            for method, K in methods:
                r = run(model, reference, method, K, a, args)
                label = "LMC" if method == "lmc" else f"PMM K={K}"
                if method == "lmc":
                    lmc_cost, ratio = r["grad_per_ess"], ""
                else:
                    ratio = f"{r['grad_per_ess'] / lmc_cost:.2f}"
                print(
                    f"| {name} | {role} | {a:g} | {label} | {r['step']:.3g} | {r['mean']:.3f} "
                    f"| {r['sd']:.3f} | {r['grad_per_ess']:.1f} | {ratio} | {r['divergent']} "
                    f"| {floor_mean:.3f}, {floor_sd:.3f} | {r['seconds']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
