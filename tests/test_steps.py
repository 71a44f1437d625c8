"""The PyMC step methods: exactness, reproducibility, PyMC integration, faults, bad input."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from pymc.exceptions import SamplingError
from pymc.stats.convergence import SamplerWarning
from pymc.step_methods import CompoundStep
from test_core import exact_stationary_variance

from pmm_pymc.core import langevin_chain, pmm_step
from pmm_pymc.mcmc.kernel import Metric, log_accept_ratio, pmm_stability_limit
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

SAMPLE_KW = {"progressbar": False, "compute_convergence_checks": False}


@pytest.fixture(scope="module")
def normal_iid():
    with pm.Model() as model:
        pm.Normal("x", 0.0, 1.0, shape=64)
    return model


@pytest.fixture(scope="module")
def small_model():
    """Two blocks of different shapes and a log-transformed scale: a non-Gaussian target."""
    with pm.Model() as model:
        s = pm.HalfNormal("s", 1.0)
        pm.StudentT("z", nu=4.0, mu=0.0, sigma=s, shape=(2, 2))
    return model


def _run_steps(step, point, n, seed):
    """Call ``step.step`` as PyMC's ``_iter_sample`` does; return draws and stats."""
    step.setup_chain(np.random.default_rng(seed), 0, n)
    step.tune = False
    draws, stats = [], []
    for _ in range(n):
        point, st = step.step(point)
        draws.append(point)
        stats.append(st[0])
    return draws, stats


# --- exactness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "K"), [(LangevinMC, 1), (PoissonMidpoint, 3)])
def test_fixed_step_is_exactly_the_core_update(small_model, cls, K):
    """With step_size given and nothing adapting, the step is the core update bit for bit.

    The reference is a hand-rolled loop over ``pmm_step`` with the documented order of
    random numbers (U of shape (K-1, 1), then Z of shape (K, 1, d)) and the model's own
    compiled gradient, so any difference in update, noise or caching shows up exactly.
    """
    kw = {"K": K} if cls is PoissonMidpoint else {}
    step = cls(step_size=0.05, adapt_step_size=False, precondition=None, model=small_model, **kw)
    point = small_model.initial_point()
    draws, stats = _run_steps(step, point, 60, seed=5)

    fn = step._logp_dlogp_func._pytensor_function
    rng = np.random.default_rng(5)
    x = np.concatenate([np.ravel(point[n]) for n in step.var_names])
    logp, grad = fn(x)
    chain = langevin_chain(0.05, K)
    for t in range(60):
        fired = [None] * K
        if K > 1:
            for i in np.flatnonzero(rng.random((K - 1, 1))[:, 0] < 1 / K):
                fired[i + 1] = np.zeros(1, dtype=np.intp)
        noise = rng.standard_normal((K, 1, x.size))
        x, _ = pmm_step(
            lambda p, g: np.stack([fn(r)[1] for r in p]), x[None], grad[None], noise, fired, chain
        )
        x = x[0]
        logp, grad = fn(x)
        got = np.concatenate([np.ravel(draws[t][n]) for n in step.var_names])
        np.testing.assert_array_equal(got, x)
        assert stats[t]["model_logp"] == float(logp)
        assert not stats[t]["diverging"]
        assert stats[t]["step_size"] == 0.05
    # one gradient per draw at the new point plus one per fired midpoint (the cache is
    # reused); the first draw also evaluates its start point
    n_mid = np.array([s.get("n_midpoints", 0) for s in stats])
    n_steps = np.array([s["n_steps"] for s in stats])
    np.testing.assert_array_equal(n_steps, 1 + n_mid + (np.arange(60) == 0))
    if K > 1:
        assert n_mid.sum() > 0


@pytest.mark.parametrize(("cls", "K"), [(LangevinMC, 1), (PoissonMidpoint, 8)])
def test_stationary_variance_on_a_pymc_model(normal_iid, cls, K):
    """Stationary variance on N(0, 1) at eta = 0.2: LMC 1/(1 - eta/2) = 1.1111, PMM K=8 1.0277.

    The exact value comes from ``exact_stationary_variance`` (enumeration of the fired
    patterns of the 1-D chain). The model is N(0, I_64): each coordinate is that 1-D chain
    (the fired pattern is shared across coordinates, the noise is not), so its stationary
    variance is the 1-D value and 64 coordinates buy statistical power per draw.
    Tolerance: 4 Monte-Carlo standard errors of the mean of x^2, from batch means (50
    batches of 120 draws; the autocorrelation is about (1 - eta)^lag, so a batch is ~25
    correlation times long). PMM must also be further than 6 MCSE from LMC's value.
    """
    eta = 0.2
    kw = {"K": K} if cls is PoissonMidpoint else {}
    step = cls(step_size=eta, adapt_step_size=False, precondition=None, model=normal_iid, **kw)
    n_burn, n_batches, batch = 100, 50, 120
    draws, _ = _run_steps(step, {"x": np.zeros(64)}, n_burn + n_batches * batch, seed=K)
    x = np.array([d["x"] for d in draws[n_burn:]], dtype=float)
    means = (x**2).mean(axis=1).reshape(n_batches, batch).mean(axis=1)
    m2, mcse = means.mean(), means.std(ddof=1) / np.sqrt(n_batches)
    exact = exact_stationary_variance(eta, K)
    assert abs(m2 - exact) < 4 * mcse, (m2, exact, mcse)
    if K > 1:
        assert abs(m2 - 1 / (1 - eta / 2)) > 6 * mcse


# --- PyMC integration --------------------------------------------------------------------------


def test_cores_give_identical_draws_and_spawn_pickles(small_model):
    """cores=1 and cores=2 (spawned processes, so the step is pickled) give the same draws.

    The chains must differ from one another (no shared noise).
    """
    kw = dict(draws=30, tune=30, chains=2, random_seed=7, **SAMPLE_KW)
    with small_model:
        one = pm.sample(step=PoissonMidpoint(), cores=1, **kw)
        two = pm.sample(step=PoissonMidpoint(), cores=2, mp_ctx="spawn", **kw)
    for name in ("s", "z"):
        a, b = one.posterior[name].values, two.posterior[name].values
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a[0], a[1])
    for stat in ("step_size", "n_steps", "n_midpoints"):
        np.testing.assert_array_equal(one.sample_stats[stat].values, two.sample_stats[stat].values)


def test_step_round_trips_through_cloudpickle(small_model):
    step = PoissonMidpoint(model=small_model, K=5, step_size=0.1)
    clone = cloudpickle.loads(cloudpickle.dumps(step))
    assert isinstance(clone, PoissonMidpoint)
    assert clone.K == 5
    a, _ = _run_steps(step, small_model.initial_point(), 5, seed=1)
    b, _ = _run_steps(clone, small_model.initial_point(), 5, seed=1)
    np.testing.assert_array_equal(a[-1]["z"], b[-1]["z"])


def test_sampling_state_restarts_each_chain(small_model):
    """Re-running a chain from the same generator after another chain gives the same draws."""
    step = PoissonMidpoint(model=small_model)
    state = step.sampling_state
    point = small_model.initial_point()
    step.setup_chain(np.random.default_rng(3), 20, 10)
    first = [point := step.step(point)[0] for _ in range(30)]
    step.sampling_state = state
    point = small_model.initial_point()
    step.setup_chain(np.random.default_rng(3), 20, 10)
    second = [point := step.step(point)[0] for _ in range(30)]
    np.testing.assert_array_equal(first[-1]["z"], second[-1]["z"])


@pytest.fixture(scope="module")
def mixture_with_label():
    """A discrete label k beside a continuous mean: the mean's target changes with k."""
    with pm.Model() as model:
        k = pm.Bernoulli("k", 0.5)
        mu = pm.Normal("mu", 0.0, 3.0)
        pm.Normal("y", mu=mu + 0.5 * k, sigma=1.0, observed=np.array([2.0, 2.5, 1.5]))
    return model


def test_compound_step_with_metropolis_and_cache_invalidation(mixture_with_label):
    """Inside a CompoundStep beside Metropolis on a discrete variable.

    PMM is the last step, so its ``model_logp`` is the recorded ``lp``. When Metropolis
    flips k, the cached (x, logp, grad) is stale; the recorded lp must still equal the
    model's log density at the recorded draw (to 1e-10), which it would not if the cache
    survived the flip.
    """
    model = mixture_with_label
    with model:
        steps = [pm.BinaryMetropolis([model["k"]]), PoissonMidpoint([model["mu"]])]
        idata = pm.sample(draws=150, tune=150, chains=1, step=steps, random_seed=2, **SAMPLE_KW)
    k = idata.posterior["k"].values[0]
    assert 0 < k.sum() < k.size  # the label moves
    logp = model.compile_logp()
    mu = idata.posterior["mu"].values[0]
    lp = idata.sample_stats["lp"].values[0]
    for t in range(k.size):
        expected = logp({"k": k[t], "mu": mu[t]})
        assert lp[t] == pytest.approx(expected, abs=1e-10)
    n_steps = idata.sample_stats["n_steps"].values[0]
    n_mid = idata.sample_stats["n_midpoints"].values[0]
    flips = np.flatnonzero(np.diff(k) != 0) + 1
    # a flip costs one extra gradient (the start point is re-evaluated); no flip reuses it
    np.testing.assert_array_equal(n_steps[flips], 2 + n_mid[flips])
    still = np.setdiff1d(np.arange(1, k.size), flips)
    np.testing.assert_array_equal(n_steps[still], 1 + n_mid[still])


def test_unblocked_gives_one_step_per_variable(small_model):
    """blocked=False: PyMC builds a CompoundStep of one PMM step per variable."""
    step = PoissonMidpoint(model=small_model, blocked=False, K=3)
    assert isinstance(step, CompoundStep)
    assert [m.var_names for m in step.methods] == [("s_log__",), ("z",)]
    assert all(isinstance(m, PoissonMidpoint) and m.K == 3 for m in step.methods)
    with small_model:
        idata = pm.sample(draws=20, tune=20, chains=1, step=step, random_seed=1, **SAMPLE_KW)
    assert "n_midpoints" in idata["sample_stats"]
    assert np.isfinite(idata["posterior"]["z"].values).all()


def test_returns_pymc_datatree_with_declared_stats(small_model):
    with small_model:
        idata = pm.sample(
            draws=40, tune=40, chains=1, step=LangevinMC(), random_seed=1, **SAMPLE_KW
        )
    ss = idata.sample_stats
    for name in ("step_size", "n_steps", "diverging", "lp", "energy_error"):
        assert name in ss
    assert (ss["n_steps"].values == 1).all()
    assert (ss["step_size"].values == ss["step_size"].values[0, 0]).all()  # frozen


def test_keyboard_interrupt_keeps_draws(small_model):
    """A KeyboardInterrupt during pm.sample returns the draws made so far (as for NUTS)."""

    def interrupt(trace, draw):
        if draw.draw_idx == 25:
            raise KeyboardInterrupt

    with small_model:
        idata = pm.sample(
            draws=100,
            tune=10,
            chains=1,
            cores=1,
            step=PoissonMidpoint(),
            callback=interrupt,
            random_seed=1,
            **SAMPLE_KW,
        )
    n = idata.posterior.sizes["draw"]
    assert 10 <= n < 100
    assert np.isfinite(idata.posterior["z"].values).all()


# --- faults ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def walled():
    """N(0, 1) with a hard wall: log density -inf for x > 1.5."""
    with pm.Model() as model:
        x = pm.Normal("x", 0.0, 1.0)
        pm.Potential("wall", pt.switch(x > 1.5, -np.inf, 0.0))
    return model


@pytest.mark.parametrize("cls", [LangevinMC, PoissonMidpoint])
def test_non_finite_proposal_is_rejected_and_sampling_goes_on(walled, cls):
    kw = {"K": 8} if cls is PoissonMidpoint else {}
    step = cls(step_size=0.8, adapt_step_size=False, precondition=None, model=walled, **kw)
    draws, stats = _run_steps(step, {"x": np.array(0.0)}, 400, seed=0)
    x = np.array([d["x"] for d in draws])
    div = np.array([s["diverging"] for s in stats])
    assert div.any() and (x <= 1.5).all()
    # a rejected draw stays where the chain was
    idx = np.flatnonzero(div[1:]) + 1
    np.testing.assert_array_equal(x[idx], x[idx - 1])
    assert len(np.unique(x)) > 100  # and the chain keeps moving
    warns = [s["warning"] for s in stats if s["warning"] is not None]
    assert len(warns) == div.sum()
    assert all(isinstance(w, SamplerWarning) for w in warns)
    if cls is PoissonMidpoint:
        assert any("midpoint" in w.message for w in warns)


def test_divergences_reach_pm_sample(walled):
    with walled:
        idata = pm.sample(
            draws=100,
            tune=0,
            chains=1,
            step=LangevinMC(step_size=1.0, adapt_step_size=False, precondition=None),
            random_seed=3,
            **SAMPLE_KW,
        )
    assert idata.sample_stats["diverging"].values.sum() > 0
    assert (idata.posterior["x"].values <= 1.5).all()


def test_bad_initial_point_raises_sampling_error_naming_the_variable(walled):
    step = LangevinMC(step_size=0.1, model=walled)
    step.setup_chain(np.random.default_rng(0), 0, 1)
    with pytest.raises(SamplingError, match="wall") as err:
        step.step({"x": np.array(2.0)})
    assert "['x']" in str(err.value)


def test_stiff_midpoints_fall_back_to_the_lmc_step():
    """Where eta * L exceeds PMM's stability limit the block takes the LMC endpoint.

    On N(0, 0.1^2) the drift's Lipschitz constant is L = 100; at eta L = 1.8 (stable for
    LMC, above PMM K=8's 1.352) every fired midpoint triggers the fallback, and the chain
    is then LMC, whose exact stationary variance is 0.01 / (1 - eta L / 2) = 0.1.
    Tolerance 0.02: the AR(1) coefficient is -0.8, so 8000 draws give an ESS of x^2 of
    about 1700 and a standard error of the variance of 0.1 * sqrt(2/1700) = 0.0035 (6 SE).
    """
    with pm.Model() as model:
        pm.Normal("x", 0.0, 0.1)
    eta = 1.8 / 100
    step = PoissonMidpoint(
        step_size=eta, adapt_step_size=False, precondition=None, K=8, model=model
    )
    draws, stats = _run_steps(step, {"x": np.array(0.0)}, 8000, seed=4)
    fired = np.array([s["n_midpoints"] > 0 for s in stats])
    fallback = np.array([s["lmc_fallback"] for s in stats])
    assert fired.any()
    np.testing.assert_array_equal(fired, fallback)
    x = np.array([d["x"] for d in draws], dtype=float)
    assert abs(np.mean(x**2) - 0.1) < 0.02
    assert pmm_stability_limit(8) == pytest.approx(1.352, abs=1e-3)
    assert pmm_stability_limit(1) == 2.0


# --- adaptation --------------------------------------------------------------------------------


def test_accept_ratio_is_the_mala_ratio():
    """The inner-product form equals the two Gaussian proposal densities written out."""
    rng = np.random.default_rng(0)
    d, eta = 4, 0.3
    x, y, gx, gy = rng.standard_normal((4, d))
    inv_mass = rng.uniform(0.5, 2.0, d)

    def logq(to, frm, g):  # log N(to; frm + eta M^-1 g, 2 eta M^-1) up to a constant
        r = to - frm - eta * inv_mass * g
        return -np.sum(r * r / inv_mass) / (4 * eta)

    expected = -1.3 - (-0.4) + logq(x, y, gy) - logq(y, x, gx)

    def ratio(logp_new, metric):
        rows = (a[None] for a in (x, y, gx, gy))
        return log_accept_ratio(np.array([-0.4]), np.array([logp_new]), *rows, eta, metric)[0]

    assert ratio(-1.3, Metric.diag(inv_mass)) == pytest.approx(expected, rel=1e-12)
    assert ratio(-1.3, Metric.dense(np.diag(inv_mass))) == pytest.approx(expected, rel=1e-12)
    assert ratio(-1.3, Metric.identity()) == pytest.approx(
        ratio(-1.3, Metric.diag(np.ones(d))), rel=1e-14
    )
    assert ratio(np.inf, Metric.identity()) == -np.inf


@pytest.mark.parametrize("precondition", ["diag", "dense"])
def test_adapted_step_size_and_preconditioner(precondition):
    """Adaptation moves the step size, freezes it after tuning, and learns the scales."""
    with pm.Model() as model:
        pm.Normal("a", 0.0, 10.0)
        pm.Normal("b", 0.0, 0.1)
    with model:
        step = PoissonMidpoint(precondition=precondition)
        idata = pm.sample(draws=500, tune=600, chains=1, step=step, random_seed=1, **SAMPLE_KW)
    var = step.warmup.metric.inv_mass
    if precondition == "dense":
        assert var.shape == (2, 2) and abs(var[0, 1]) < 0.2 * np.sqrt(var[0, 0] * var[1, 1])
        var = np.diag(var)
    # the diagonal estimates the variances (100 and 0.01) within a factor 2 after 600 tunes
    assert 50 < var[0] < 200 and 0.005 < var[1] < 0.02
    eta = idata.sample_stats["step_size"].values[0]
    assert (eta == eta[0]).all() and 0.05 < eta[0] < 1.5
    sd = idata.posterior["a"].std().item() / 10, idata.posterior["b"].std().item() / 0.1
    # 500 draws: the sd is known to ~15 % (ESS >= 100); the bias at the adapted step is ~5 %
    assert 0.7 < sd[0] < 1.3 and 0.7 < sd[1] < 1.3


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -1.0}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"step_size": float("inf")}, "step_size"),
        ({"step_size": "0.1"}, "step_size"),
        ({"step_size": None, "adapt_step_size": False}, "adapt_step_size"),
        ({"adapt_step_size": "yes"}, "adapt_step_size"),
        ({"precondition": "full"}, "precondition"),
        ({"target_accept": 1.0}, "target_accept"),
        ({"target_accept": 0}, "target_accept"),
        ({"max_energy_error": -1.0}, "max_energy_error"),
        ({"K": 0}, "K"),
        ({"K": 2.5}, "K"),
        ({"K": True}, "K"),
        ({"blocks_per_draw": 0}, "blocks_per_draw"),
        ({"blocks_per_draw": 2.0}, "blocks_per_draw"),
        ({"blocks_per_draw": True}, "blocks_per_draw"),
    ],
)
def test_bad_options_raise_at_construction(small_model, kwargs, match):
    cls = PoissonMidpoint if "K" in kwargs else LangevinMC
    with pytest.raises(ValueError, match=match) as err:
        cls(model=small_model, **kwargs)
    bad = next(iter(v for k, v in kwargs.items() if k == match), None)
    if bad is not None:
        assert repr(bad) in str(err.value)


def test_discrete_variables_are_named(mixture_with_label):
    with pytest.raises(ValueError, match=r"discrete.*\['k'\]"):
        PoissonMidpoint(
            [mixture_with_label["k"], mixture_with_label["mu"]], model=mixture_with_label
        )


def test_model_without_continuous_variables():
    with pm.Model() as model:
        pm.Poisson("n", 3.0)
    with pytest.raises(ValueError, match="continuous free variable"):
        LangevinMC(model=model)


# --- thinning: several transitions per draw --------------------------------------------------


@pytest.mark.parametrize(("cls", "n"), [(LangevinMC, 3), (PoissonMidpoint, 4)])
def test_blocks_per_draw_records_every_nth_state(small_model, cls, n):
    """``blocks_per_draw=n`` records every n-th state of the ``blocks_per_draw=1`` chain.

    Fixed step, nothing adapting, the same generator: the random numbers are consumed in
    the same order, so the thinned draws equal every n-th unthinned draw bit for bit, and
    ``n_steps`` (``n_midpoints``) of a thinned draw is the sum over its n transitions.
    """
    kw = {"step_size": 0.2, "adapt_step_size": False, "precondition": None}
    if cls is PoissonMidpoint:
        kw["K"] = 3
    point = small_model.initial_point()
    m = 15
    with small_model:
        draws1, stats1 = _run_steps(cls(**kw), point, n * m, seed=5)
        draws_n, stats_n = _run_steps(cls(blocks_per_draw=n, **kw), point, m, seed=5)
    names = list(point)
    for j in range(m):
        for name in names:
            np.testing.assert_array_equal(draws_n[j][name], draws1[(j + 1) * n - 1][name])
        block = stats1[j * n : (j + 1) * n]
        assert stats_n[j]["n_steps"] == sum(st["n_steps"] for st in block)
        assert stats_n[j]["diverging"] == any(st["diverging"] for st in block)
        # energy_error: of the first diverging transition, else of the last
        reported = next((st for st in block if st["diverging"]), block[-1])
        assert stats_n[j]["energy_error"] == reported["energy_error"]
        if cls is PoissonMidpoint:
            assert stats_n[j]["n_midpoints"] == sum(st["n_midpoints"] for st in block)
    # the fixed step is not trivially static: the chain moved, and midpoints fired
    assert not np.array_equal(draws_n[0]["z"], draws_n[-1]["z"])
    if cls is PoissonMidpoint:
        assert sum(st["n_midpoints"] for st in stats_n) > 0


def test_blocks_per_draw_counts_the_warmup_in_transitions(small_model):
    """With n blocks per draw the warm-up sees n updates per tuning draw and its windows are
    laid out for ``tune * n`` transitions, so they end exactly when tuning ends."""
    n, tune = 3, 60
    with small_model:
        step = PoissonMidpoint(blocks_per_draw=n)
    step.setup_chain(np.random.default_rng(0), tune, 10)
    assert step.warmup.n_tune == tune * n
    assert step.warmup.windows[-1][1] <= tune * n
    point = small_model.initial_point()
    for _ in range(tune):
        point, stats = step.step(point)
    assert step.warmup.iteration == tune * n
    step.stop_tuning()
    _, stats = step.step(point)
    assert stats[0]["tune"] is False and stats[0]["n_steps"] >= n


def test_blocks_per_draw_in_pm_sample(small_model):
    """Through pm.sample: the draws are the thinned chain and n_steps counts every block
    (at least n gradients per kept draw: one proposal per transition)."""
    n = 4
    with small_model:
        step = PoissonMidpoint(blocks_per_draw=n)
        idata = pm.sample(
            step=step,
            tune=100,
            draws=50,
            chains=1,
            random_seed=1,
            **SAMPLE_KW,
        )
    n_steps = idata.sample_stats["n_steps"].values
    assert n_steps.shape == (1, 50)
    assert (n_steps >= n).all()
    assert (idata.sample_stats["n_midpoints"].values <= n * (step.K - 1)).all()
