"""Fit a bimodal Gaussian-mixture posterior with PoissonMidpoint and LangevinMC.

The posterior is posteriordb's ``low_dim_gauss_mix`` (shipped with the package): a
two-component normal mixture fitted to 1000 points, with ordered means, half-normal
scales and a Beta mixing weight. Its likelihood is a mixture, so the posterior is not
log-concave. Both samplers adapt their step size and a preconditioner while
tuning; the script prints an ArviZ summary of each fit, the distance of the posterior
means from the posteriordb reference draws, and the cost in gradient evaluations per
effective sample (sum of ``n_steps`` / min bulk ESS).

Then it measures the frontier of bias against cost on the same posterior
(:func:`pmm_pymc.compare.frontier.frontier`): PMM (K=4) and LMC at a few fixed steps around
the ones adapted above, in runs of many chains started at reference draws, beside NUTS, and
prints where PMM is cheaper than LMC for the same bias and where it is not, and saves the
figure ``demo_frontier.png`` (with matplotlib; without it the demo only prints). A small
frontier: ``benchmarks/bench_frontier.py`` measures the full one (``docs/frontier.md``).

Run::

    python examples/demo.py            # about a minute on 2 cores
"""

from __future__ import annotations

import time
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm

from pmm_pymc.compare.frontier import (
    FrontierSetting,
    cost_to_reach,
    frontier,
    nuts_point,
    where_pmm_wins,
)
from pmm_pymc.evaluation.posteriors import load_model, load_reference
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

NAME = "low_dim_gauss_mix"
FIGURE = Path("demo_frontier.png")
STEP_FACTORS = (0.25, 0.5, 1.0)  # fixed steps, times the step PMM adapted at the default


def show_frontier(model, reference, step: float) -> None:
    """A small frontier: PMM K=4 and LMC at fixed steps, NUTS; the table and one line."""
    print(f"\n=== the frontier: bias against gradients per effective sample on {NAME} ===")
    settings = [
        FrontierSetting(sampler, method, K, step_size=round(step * f, 4))
        for sampler, method, K in (("LMC", "lmc", None), ("PMM K=4", "pmm", 4))
        for f in STEP_FACTORS
    ]
    table = frontier(
        model, reference, settings, chains=32, draws=500, tune=100, random_seed=2, progress=print
    )
    nuts = nuts_point(model, reference, draws=300, tune=300, random_seed=2)
    table = pd.concat([table, pd.DataFrame([nuts])], ignore_index=True)
    print(
        f"  {'NUTS':<10} {'default':<12} grad/ESS {nuts['grad_per_ess']:8.1f}  "
        f"mean err {nuts['max_abs_mean_err']:.3f} (floor {nuts['mean_floor']:.3f})  "
        f"sd err {nuts['max_abs_sd_err']:.3f} (floor {nuts['sd_floor']:.3f})"
    )
    for error, label in (
        ("max_abs_sd_err", "worst sd error"),
        ("max_abs_mean_err", "worst mean error"),
    ):
        print("  " + where_pmm_wins(cost_to_reach(table, error=error), error_name=label))
    try:
        from pmm_pymc.compare.plots import plot_frontier

        path = plot_frontier(table, FIGURE, title=f"{NAME}: bias against cost")
        print(f"  figure: {path.resolve()}")
    except ImportError:
        print("  (matplotlib is not installed: no figure; pip install pmm-pymc[plot])")


def main() -> None:
    model = load_model(NAME)
    reference = load_reference(NAME)["posterior"]
    print(f"posterior: {NAME} (posteriordb); free variables {[v.name for v in model.free_RVs]}")
    rows = []
    for step_cls in (PoissonMidpoint, LangevinMC):
        with model:
            t0 = time.perf_counter()
            idata = pm.sample(
                draws=2000,
                tune=1000,
                chains=4,
                cores=2,
                step=step_cls(),
                random_seed=1,
                progressbar=False,
            )
            wall = time.perf_counter() - t0
        print(f"\n=== {step_cls.__name__} ===")
        print(az.summary(idata))
        stats = idata["sample_stats"]
        n_grad = int(stats["n_steps"].sum())
        ess = az.ess(idata)
        min_ess = min(float(np.min(ess[v].values)) for v in ess.data_vars)
        mcse = az.mcse(idata)
        errs, noise = [], []
        for var in reference.data_vars:
            ref_sd = reference[var].std(("chain", "draw"))
            diff = idata["posterior"][var].mean(("chain", "draw")) - reference[var].mean(
                ("chain", "draw")
            )
            errs.append(np.abs(diff / ref_sd).values.ravel())
            noise.append((mcse[var] / ref_sd).values.ravel())
        errs, noise = np.concatenate(errs), np.concatenate(noise)
        rows.append(
            (
                step_cls.__name__,
                float(stats["step_size"].values[:, 0].mean()),
                n_grad,
                min_ess,
                n_grad / min_ess,
                float(errs.max()),
                float(noise[errs.argmax()]),
                wall,
            )
        )

    print("\n=== cost ===")
    print(
        f"{'step':<17}{'step_size':>10}{'grad evals':>12}{'min ESS':>9}{'grads/ESS':>11}"
        f"{'max |mean err|/sd':>19}{'(its MCSE/sd)':>14}{'wall s':>8}"
    )
    for name, eta, n_grad, ess, per_ess, err, err_mcse, wall in rows:
        print(
            f"{name:<17}{eta:>10.3f}{n_grad:>12d}{ess:>9.0f}{per_ess:>11.1f}{err:>19.3f}"
            f"{err_mcse:>14.3f}{wall:>8.1f}"
        )
    print(
        "\ngrads/ESS: gradient evaluations (midpoints included) per effective sample of the "
        "worst-mixing quantity; mean errors are against posteriordb's reference draws, in "
        "reference sd, beside the Monte-Carlo standard error of that mean."
    )
    show_frontier(model, load_reference(NAME), step=rows[0][1])


if __name__ == "__main__":
    main()
