"""A small Bayesian neural network: PoissonMidpoint and LangevinMC on a multimodal posterior.

A 2-8-1 tanh network classifies two interleaved half-moons (noisy, generated here with
numpy). Its posterior over the 33 weights is not log-concave: hidden units can be
permuted and their signs flipped, and the likelihood is a sum of sigmoids of products of
weights. The script fits it with both steps and reports, on fresh test data, the accuracy
and the log predictive density of the posterior predictive, and the gradient evaluations
used. Weight-space ESS is meaningless under the symmetries; the predictions are the
quantity of interest.

Run::

    python examples/bnn.py
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from scipy.special import expit

from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

N_HIDDEN = 8


def make_moons(rng: np.random.Generator, n: int, noise: float = 0.25):
    t = rng.uniform(0.0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label == 0, np.cos(t), 1.0 - np.cos(t))
    y = np.where(label == 0, np.sin(t), 0.5 - np.sin(t))
    return np.column_stack([x, y]) + rng.normal(scale=noise, size=(n, 2)), label


def build_model(X: np.ndarray, y: np.ndarray) -> pm.Model:
    with pm.Model() as model:
        w1 = pm.Normal("w1", 0.0, 1.0, shape=(2, N_HIDDEN))
        b1 = pm.Normal("b1", 0.0, 1.0, shape=N_HIDDEN)
        w2 = pm.Normal("w2", 0.0, 1.0, shape=N_HIDDEN)
        b2 = pm.Normal("b2", 0.0, 1.0)
        logit = pt.dot(pt.tanh(pt.dot(X, w1) + b1), w2) + b2
        pm.Bernoulli("y", logit_p=logit, observed=y)
    return model


def predict(idata, X: np.ndarray) -> np.ndarray:
    """Posterior predictive probability of class 1 at each row of ``X``."""
    post = idata["posterior"]
    w1 = post["w1"].values.reshape(-1, 2, N_HIDDEN)
    b1 = post["b1"].values.reshape(-1, N_HIDDEN)
    w2 = post["w2"].values.reshape(-1, N_HIDDEN)
    b2 = post["b2"].values.reshape(-1)
    hidden = np.tanh(np.einsum("nd,sdh->snh", X, w1) + b1[:, None, :])
    return expit(np.einsum("snh,sh->sn", hidden, w2) + b2[:, None]).mean(axis=0)


def main() -> None:
    rng = np.random.default_rng(0)
    X, y = make_moons(rng, 200)
    X_test, y_test = make_moons(rng, 1000)
    model = build_model(X, y)
    print(f"{'step':<17}{'step_size':>10}{'grad evals':>12}{'test acc':>10}{'test lpd':>10}")
    for step_cls in (PoissonMidpoint, LangevinMC):
        with model:
            idata = pm.sample(
                draws=2000,
                tune=2000,
                chains=4,
                cores=2,
                step=step_cls(),
                random_seed=4,
                progressbar=False,
                compute_convergence_checks=False,
            )
        p = predict(idata, X_test)
        acc = np.mean((p > 0.5) == y_test)
        lpd = np.mean(np.log(np.where(y_test == 1, p, 1.0 - p)))
        stats = idata["sample_stats"]
        print(
            f"{step_cls.__name__:<17}{stats['step_size'].values[:, 0].mean():>10.4f}"
            f"{int(stats['n_steps'].sum()):>12d}{acc:>10.3f}{lpd:>10.3f}"
        )


if __name__ == "__main__":
    main()
