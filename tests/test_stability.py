"""Stability at every setting (issue 8, item 3): no blow-up across target_accept and K on a
time-series likelihood with a ``pytensor.scan`` recursion, and a chain that leaves the bulk
during sampling is reported.

The per-chain steps share one compiled log density and gradient (``logp_dlogp_func``), so
each setting costs only its draws; the chains are driven as ``pm.sample`` drives them
(``setup_chain``, ``step``, ``stop_tuning``) from a jittered start.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
from pymc.stats.convergence import SamplerWarning, WarningType

from pmm_pymc.evaluation.timeseries import ARMA11_TRUTH, arma11_model, garch11_model
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint
from pmm_pymc.mcmc.warmup import stray_threshold


@pytest.fixture(scope="module")
def arma():
    model = arma11_model()
    fn = model.logp_dlogp_function(ravel_inputs=True)
    fn.trust_input = True
    return model, fn


def _chains(model, fn, step_kw, *, chains, tune, draws, seed):
    """Run ``chains`` chains of a step built on the shared compiled function."""
    out = []
    for c in range(chains):
        rng = np.random.default_rng([seed, c])
        cls = PoissonMidpoint if "K" in step_kw else LangevinMC
        with model:
            step = cls(logp_dlogp_func=fn, **step_kw)
        step.setup_chain(rng, tune, draws)
        point = {
            k: v + rng.uniform(-1, 1, size=np.shape(v)) for k, v in model.initial_point().items()
        }
        xs, stats = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(tune + draws):
                if i == tune:
                    step.stop_tuning()
                point, st = step.step(point)
                if i >= tune:
                    xs.append(np.concatenate([np.ravel(point[v.name]) for v in model.value_vars]))
                    stats.append(st[0])
        out.append((np.array(xs), stats, step))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("K", "target"),
    [(1, 0.5), (1, 0.99), (2, 0.6), (4, 0.5), (8, 0.5), (8, 0.75)],
)
def test_no_blow_up_on_a_scan_model(arma, K, target):
    """ARMA(1,1) on 200 observations, errors by ``pytensor.scan`` (``|theta| > 1`` explodes).

    Before the stability cap, PMM with K = 4 and 8 at target 0.5 and 0.6 lost one to three
    of four chains here (hundreds of divergent draws, chains stuck far out; docs/method.md).
    Now, for every setting: at most 1 % divergent draws (the guard's job is none; 1 %
    leaves room for a rare stiff excursion); no draw flagged as having left the bulk;
    every chain's sd of each coordinate within a factor 2 of the median over the chains
    (a blown chain's was 2-10x off; the Monte-Carlo error of an sd from 300 autocorrelated
    draws is about 15 %, and the step's own bias at target 0.5 is about 20 %); every
    chain's mean within 2.5 median chain sds of the parameters the data were simulated
    with (the posterior mean is within about one sd of them on this series, plus the
    chain mean's Monte-Carlo error; blown chains were 2.3-6 sds off).
    """
    model, fn = arma
    kw = {"target_accept": target} | ({"K": K} if K > 1 else {})
    runs = _chains(model, fn, kw, chains=3, tune=300, draws=300, seed=3)
    draws = np.stack([r[0] for r in runs])  # (chain, draw, d)
    diverging = np.mean([[s["diverging"] for s in r[1]] for r in runs])
    left = sum(s["left_bulk"] for r in runs for s in r[1])
    assert diverging <= 0.01
    assert left == 0
    sds = draws.std(axis=1)
    median_sd = np.median(sds, axis=0)
    assert np.all(sds < 2 * median_sd) and np.all(sds > median_sd / 2), sds
    truth = np.array(
        [ARMA11_TRUTH["mu"], ARMA11_TRUTH["phi"], ARMA11_TRUTH["theta"], 0.0]  # log sigma
    )
    z = np.abs(draws.mean(axis=1) - truth) / median_sd
    assert np.all(z < 2.5), z
    # the cap bounds eta L by half the stability limit at the curvature the warm-up saw
    for _, _, step in runs:
        assert step.warmup.stability_cap is not None
        assert step.step_size <= step.warmup.stability_cap + 1e-12


def test_garch_model_builds_and_has_the_documented_variables():
    model = garch11_model(n_obs=50)
    assert [v.name for v in model.free_RVs] == ["mu", "omega", "alpha", "beta"]
    assert model["returns"].get_value().shape == (50,)
    with pytest.raises(ValueError, match="n_obs must be an integer >= 2"):
        garch11_model(n_obs=1)


@pytest.fixture(scope="module")
def gauss4():
    with pm.Model() as model:
        pm.Normal("x", 0.0, 1.0, shape=4)
    return model


def _tuned_lmc(model, tune=300, seed=0):
    with model:
        step = LangevinMC()
    step.setup_chain(np.random.default_rng(seed), tune, 100)
    point = model.initial_point()
    for _ in range(tune):
        point, _ = step.step(point)
    step.stop_tuning()
    return step, point


def test_a_chain_that_leaves_the_bulk_is_reported(gauss4):
    """A chain in the bulk is never flagged; one put far out during sampling is, once.

    The chain is moved to x = 12 in each coordinate after warm-up (log density 288 below
    the mode, far beyond the stray-row margin of about 19 for d = 4) with the step frozen
    at 1e-3, so it crawls back silently (no divergence): the moving average of its log
    density falls below the floor within a few draws, the ``left_bulk`` stat says so,
    and exactly one ``SamplerWarning`` is raised for it.
    """
    step, point = _tuned_lmc(gauss4)
    floor = step.warmup.bulk_floor
    assert floor is not None
    assert floor < -stray_threshold(4, 0.0) + 1.0  # below the mode's level by the margin
    flagged = []
    for _ in range(1000):
        point, st = step.step(point)
        flagged.append(st[0]["left_bulk"])
    assert not any(flagged)

    step.warmup.step_size = 1e-3
    far = {"x": np.full(4, 12.0)}
    stats = []
    for _ in range(60):
        far, st = step.step(far)
        stats.append(st[0])
    assert not any(s["diverging"] for s in stats)
    assert stats[-1]["left_bulk"]
    reports = [
        s["warning"]
        for s in stats
        if isinstance(s["warning"], SamplerWarning) and s["warning"].kind == WarningType.BAD_ENERGY
    ]
    assert len(reports) == 1
    assert "left the bulk" in reports[0].message
    assert reports[0].level == "warn"
