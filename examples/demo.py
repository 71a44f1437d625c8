"""Fit a bimodal Gaussian-mixture posterior with PoissonMidpoint and LangevinMC.

The posterior is posteriordb's ``low_dim_gauss_mix`` (shipped with the package): a
two-component normal mixture fitted to 1000 points, with ordered means, half-normal
scales and a Beta mixing weight. Its likelihood is a mixture, so the posterior is not
log-concave. Both samplers adapt their step size and a preconditioner while
tuning; the script prints an ArviZ summary of each fit, the distance of the posterior
means from the posteriordb reference draws, and the cost in gradient evaluations per
effective sample (sum of ``n_steps`` / min bulk ESS).

Run::

    python examples/demo.py            # well under a minute on 2 cores
"""

from __future__ import annotations

import time

import arviz as az
import numpy as np
import pymc as pm

from pmm_pymc.evaluation.posteriors import load_model, load_reference
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

NAME = "low_dim_gauss_mix"


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


if __name__ == "__main__":
    main()
