"""Generate ``pmm_pymc/data/torch_targets/logistic.npz``: data and NUTS reference draws.

The torch target ``"logistic"`` (:mod:`pmm_pymc.evaluation.torch_targets`) is a Bayesian
logistic regression whose reference draws come from a long NUTS run of the same model written
in PyMC. This script made the shipped file once; nothing recomputes it at run time.

The data: 200 observations of an intercept and four standardised covariates, two of them
correlated (rho = 0.9) so that the posterior is mildly ill-conditioned; coefficients
(-0.5, 1.0, -1.0, 0.5, 0.0); prior N(0, 2.5^2) on every coefficient. NUTS: 10 chains,
2000 tuning steps, 10000 draws thinned by 10 to 1000 per chain, target_accept 0.9.

Run ``python benchmarks/make_logistic_reference.py`` (4 minutes on 2 busy cores); it prints the
convergence diagnostics of the reference (every R-hat must be below 1.01 and every bulk ESS
above 5000 before the file is kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

import arviz_stats as azs
import numpy as np
import pymc as pm

OUT = Path(__file__).resolve().parents[1] / "pmm_pymc" / "data" / "torch_targets" / "logistic.npz"
N_OBS, PRIOR_SD, SEED = 200, 2.5, 20241201
BETA_TRUE = np.array([-0.5, 1.0, -1.0, 0.5, 0.0])


def make_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cov = np.eye(4)
    cov[0, 1] = cov[1, 0] = 0.9
    z = rng.multivariate_normal(np.zeros(4), cov, size=N_OBS)
    z = (z - z.mean(0)) / z.std(0)
    X = np.column_stack([np.ones(N_OBS), z])
    p = 1.0 / (1.0 + np.exp(-(X @ BETA_TRUE)))
    y = (rng.uniform(size=N_OBS) < p).astype(np.int64)
    return X, y


def main() -> int:
    rng = np.random.default_rng(SEED)
    X, y = make_data(rng)
    with pm.Model() as model:
        beta = pm.Normal("beta", 0.0, PRIOR_SD, shape=X.shape[1])
        pm.Bernoulli("y", logit_p=pm.math.dot(X, beta), observed=y)
        idata = pm.sample(
            draws=10000,
            tune=2000,
            chains=10,
            cores=1,
            target_accept=0.9,
            random_seed=SEED,
            progressbar=False,
            model=model,
        )
    draws = idata["posterior"]["beta"].values[:, ::10]  # (10, 1000, 5)
    thinned = idata["posterior"].to_dataset().isel(draw=slice(None, None, 10))
    rhat = azs.rhat(thinned)["beta"].values
    ess = azs.ess(thinned)["beta"].values
    print("mean", draws.reshape(-1, 5).mean(0).round(3), "sd", draws.reshape(-1, 5).std(0).round(3))
    print("rhat", rhat.round(4), "ess_bulk", ess.round(0))
    if rhat.max() > 1.01 or ess.min() < 5000:
        print("reference not converged; file not written")
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, X=X, y=y, prior_sd=PRIOR_SD, draws=draws, seed=SEED)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
