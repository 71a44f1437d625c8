"""sample_chains: many PMM/LMC chains in one vectorised compiled call per evaluation."""

from __future__ import annotations

import inspect
import logging
import warnings

import numpy as np
import pymc as pm
import pytest
from test_core import exact_stationary_variance

from pmm_pymc.mcmc.chains import DEFAULT_K, BatchedLogpGrad, sample_chains
from pmm_pymc.mcmc.kernel import LangevinState, Metric, gap_noise, log_accept_ratio
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint
from pmm_pymc.mcmc.warmup import Warmup, adaptation_windows

SIGMA = np.array([1.0, 2.0])


@pytest.fixture(scope="module")
def gauss():
    """Independent N(0, SIGMA^2): the stationary law of PMM/LMC is known exactly."""
    with pm.Model() as model:
        pm.Normal("x", 0.0, SIGMA, shape=2)
    return model


@pytest.fixture(scope="module")
def rich():
    """Coords, data, a transformed variable, a deterministic and an observation."""
    rng = np.random.default_rng(0)
    with pm.Model(coords={"g": ["a", "b", "c"]}) as model:
        d = pm.Data("d", np.arange(3.0), dims="g")
        mu = pm.Normal("mu", 0.0, 1.0, dims="g")
        s = pm.HalfNormal("s", 1.0)
        pm.Deterministic("mu2", 2.0 * mu + d, dims="g")
        pm.Normal("y", mu, s, observed=rng.normal(size=(5, 3)))
    return model


def _per_chain_moments(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain time averages of x and x^2, shapes (C, d): independent across chains."""
    return draws.mean(axis=1), (draws**2).mean(axis=1)


@pytest.mark.parametrize(
    ("method", "K", "gap"), [("lmc", None, False), ("pmm", 4, False), ("pmm", 8, True)]
)
def test_fixed_step_matches_exact_stationary_law(gauss, method, K, gap, monkeypatch):
    """Fixed eta, M = I: means 0 and variances sigma^2 V(eta / sigma^2, K) exactly.

    ``gap`` forces the noise drawn per gap between fired midpoints (used
    for large batches), which must leave the law unchanged.

    V is the exact stationary variance of PMM on N(0, 1) (tests/test_core.py);
    on N(0, sigma^2) the chain in x / sigma is PMM with step eta / sigma^2.
    Tolerance: 4 standard errors of the mean over chains of the per-chain time
    averages (chains are independent, so that standard error is exact up to its
    own estimate). At eta = 0.2 LMC's bias on the unit coordinate (+11%) is
    about 10 standard errors, so a wrong stationary law cannot pass.
    """
    import pmm_pymc.mcmc.kernel as kernel_module

    if gap:
        monkeypatch.setattr(kernel_module, "GAP_NOISE_MIN_SIZE", 0)
    eta, chains, draws = 0.2, 200, 1000
    idata = sample_chains(
        gauss,
        chains=chains,
        draws=draws,
        tune=100,
        method=method,
        K=K,
        step_size=eta,
        adapt_step_size=False,
        precondition=None,
        random_seed=11,
    )
    x = idata.posterior["x"].values  # (chain, draw, 2)
    m1, m2 = _per_chain_moments(x)
    k = 1 if method == "lmc" else K
    expected_var = SIGMA**2 * np.array([exact_stationary_variance(eta / s**2, k) for s in SIGMA])
    se1 = m1.std(axis=0, ddof=1) / np.sqrt(chains)
    se2 = m2.std(axis=0, ddof=1) / np.sqrt(chains)
    np.testing.assert_array_less(np.abs(m1.mean(axis=0)), 4 * se1)
    np.testing.assert_array_less(np.abs(m2.mean(axis=0) - expected_var), 4 * se2)
    if method == "lmc":  # the test has the power to see LMC's discretisation bias
        assert abs(m2.mean(axis=0)[0] - 1.0) > 4 * se2[0]


def test_adapted_defaults_get_the_posterior(gauss):
    """Default adaptation on N(0, diag(1, 4)): means and variances right.

    Tolerance: means within 4 standard errors; variances within 4 standard
    errors plus the discretisation bias at the adapted steps. With the pooled
    preconditioner M ~ diag(sigma^2), each coordinate is PMM on N(0, 1) at
    its chain's step eta, whose exact stationary variance is V(eta, K); the
    preconditioner is estimated and the steps differ between chains, so we allow
    V between 0.75 times the smallest and 1.25 times the largest step.
    """
    chains = 128
    idata = sample_chains(gauss, chains=chains, draws=500, tune=500, random_seed=3)
    steps = idata.sample_stats["step_size"].values
    assert np.all(steps == steps[:, :1])  # each chain's step is frozen after tuning
    x = idata.posterior["x"].values
    m1, m2 = _per_chain_moments(x)
    se1 = m1.std(axis=0, ddof=1) / np.sqrt(chains)
    se2 = m2.std(axis=0, ddof=1) / np.sqrt(chains)
    np.testing.assert_array_less(np.abs(m1.mean(axis=0)), 4 * se1)
    lo = exact_stationary_variance(0.75 * steps.min(), DEFAULT_K) - 1.0
    hi = exact_stationary_variance(1.25 * steps.max(), DEFAULT_K) - 1.0
    rel = m2.mean(axis=0) / SIGMA**2 - 1.0
    assert np.all(rel > lo - 4 * se2 / SIGMA**2), (rel, lo, se2)
    assert np.all(rel < hi + 4 * se2 / SIGMA**2), (rel, hi, se2)
    assert not idata.sample_stats["diverging"].values.any()


@pytest.mark.parametrize(("step_class", "discard"), [(PoissonMidpoint, False), (LangevinMC, True)])
def test_layout_matches_pm_sample(rich, step_class, discard):
    """Same groups, variables, dims, coords, stat names and dtypes as pm.sample."""
    method = "pmm" if step_class is PoissonMidpoint else "lmc"
    with rich:
        ref = pm.sample(
            step=step_class(),
            draws=5,
            tune=5,
            chains=2,
            cores=1,
            progressbar=False,
            compute_convergence_checks=False,
            random_seed=1,
            discard_tuned_samples=discard,
        )
    ours = sample_chains(
        rich,
        chains=3,
        draws=7,
        tune=5,
        method=method,
        random_seed=1,
        discard_tuned_samples=discard,
    )
    assert set(ours.children) == set(ref.children)
    for group in ref.children:
        r, o = ref[group].dataset, ours[group].dataset
        # sample_chains adds how often each chain was restarted and whether it was interrupted
        extra = {"warmup_restarts"} if group == "sample_stats" else set()
        assert set(o.data_vars) == set(r.data_vars) | extra, group
        for name in r.data_vars:
            assert o[name].dims == r[name].dims, (group, name)
            assert o[name].dtype == r[name].dtype, (group, name)
        for dim in set(r.dims) - {"chain", "draw"}:
            np.testing.assert_array_equal(o[dim].values, r[dim].values)
        assert set(o.attrs) == set(r.attrs) | ({"interrupted"} if extra else set()), group
    assert ours.posterior.sizes["chain"] == 3 and ours.posterior.sizes["draw"] == 7
    if not discard:
        assert ours.warmup_posterior.sizes["draw"] == 5
    post = ours.posterior
    # constrained space and deterministics, from the model's own graphs
    assert np.all(post["s"].values > 0)
    np.testing.assert_allclose(post["mu2"].values, 2 * post["mu"].values + np.arange(3.0))
    stats = ours.sample_stats
    if method == "pmm":
        np.testing.assert_array_equal(stats["n_steps"].values, 1 + stats["n_midpoints"].values)
    else:
        assert np.all(stats["n_steps"].values == 1)


def test_lp_is_the_model_logp_of_the_draws(rich):
    """sample_stats.lp is the model's log density (unconstrained space) at each kept draw."""
    idata = sample_chains(rich, chains=2, draws=3, tune=10, random_seed=5)
    logp_fn = rich.compile_logp()
    post = idata.posterior
    for c in range(2):
        for d in range(3):
            point = {
                "mu": post["mu"].values[c, d],
                "s_log__": np.log(post["s"].values[c, d]),
            }
            assert idata.sample_stats["lp"].values[c, d] == pytest.approx(logp_fn(point))


def test_reproducible_with_random_seed(gauss):
    """The same seed gives identical draws and stats; another seed does not."""
    kw = {"chains": 8, "draws": 20, "tune": 30}
    a = sample_chains(gauss, random_seed=42, **kw)
    b = sample_chains(gauss, random_seed=42, **kw)
    c = sample_chains(gauss, random_seed=43, **kw)
    np.testing.assert_array_equal(a.posterior["x"].values, b.posterior["x"].values)
    for name in a.sample_stats.data_vars:
        np.testing.assert_array_equal(a.sample_stats[name].values, b.sample_stats[name].values)
    assert not np.array_equal(a.posterior["x"].values, c.posterior["x"].values)


def test_draws_do_not_depend_on_cores(rich, monkeypatch):
    """Splitting the batched calls over threads changes no number (rows do not interact)."""
    import pmm_pymc.mcmc.chains as chains_module

    monkeypatch.setattr(chains_module, "MIN_ROWS_PER_THREAD", 1)  # split even 6 chains
    monkeypatch.setattr(chains_module, "SPLIT_SECONDS", 0.0)  # of a cheap model
    kw = {"chains": 6, "draws": 10, "tune": 20, "random_seed": 7}
    one = sample_chains(rich, cores=1, **kw)
    three = sample_chains(rich, cores=3, **kw)
    for name in one.posterior.data_vars:
        np.testing.assert_array_equal(one.posterior[name].values, three.posterior[name].values)
    np.testing.assert_array_equal(one.sample_stats["lp"].values, three.sample_stats["lp"].values)


def test_chains_are_independent(gauss):
    """All chains start at one point (jitter=False); independent noise decorrelates them.

    If the chains shared noise, the mean over the C chains would fluctuate in
    time with the variance of one chain; independent chains give 1/C of it. The
    ratio's estimate has a relative error of about 10% (1000 draws,
    autocorrelation time about 5), so the band [0.5, 2] is wide; shared noise
    would give a ratio of about C = 64.
    """
    chains = 64
    idata = sample_chains(
        gauss,
        chains=chains,
        draws=1000,
        tune=50,
        method="lmc",
        step_size=0.2,
        adapt_step_size=False,
        precondition=None,
        jitter=False,
        random_seed=2,
    )
    x = idata.posterior["x"].values[..., 0]  # (chain, draw)
    ratio = x.mean(axis=0).var() / (x.var() / chains)
    assert 0.5 < ratio < 2.0, ratio
    first = (
        sample_chains(
            gauss,
            chains=4,
            draws=1,
            tune=0,
            step_size=0.2,
            adapt_step_size=False,
            precondition=None,
            jitter=False,
            random_seed=2,
        )
        .posterior["x"]
        .values[:, 0, 0]
    )
    assert len(np.unique(first)) == 4  # one step from the same point already differs


def test_midpoint_counts(gauss):
    """n_midpoints is Binomial(K - 1, 1/K) per draw: mean (K - 1)/K within 4 standard errors."""
    K = 8
    idata = sample_chains(gauss, chains=100, draws=200, tune=20, K=K, random_seed=4)
    n_mid = idata.sample_stats["n_midpoints"].values
    p = 1.0 / K
    se = np.sqrt((K - 1) * p * (1 - p) / n_mid.size)
    assert abs(n_mid.mean() - (K - 1) * p) < 4 * se
    np.testing.assert_array_equal(idata.sample_stats["n_steps"].values, 1 + n_mid)


def test_divergent_moves_are_rejected(gauss, caplog):
    """A step far past stability: every move is a divergence, the chains stay put, and
    PyMC's convergence checks report the divergences as pm.sample does (no numpy overflow
    warnings from the huge step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        idata = sample_chains(
            gauss,
            chains=4,
            draws=10,
            tune=0,
            method="lmc",
            step_size=1e6,
            adapt_step_size=False,
            precondition=None,
            random_seed=0,
        )
    assert idata.sample_stats["diverging"].values.all()
    x = idata.posterior["x"].values
    np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1], x.shape))
    assert np.all(np.isfinite(x))
    assert "There were 40 divergences after tuning" in caplog.text


@pytest.mark.parametrize("vectorize", [True, False])
def test_batched_logp_grad_equals_pymc(rich, vectorize):
    """Each row of the batched call equals pymc's own compiled logp and dlogp at that point."""
    value_vars = rich.continuous_value_vars
    point = rich.initial_point(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the vectorised path must not fall back silently
        f = BatchedLogpGrad(rich, value_vars, point, vectorize=vectorize)
    assert f.vectorized is vectorize and f.n_dim == 4
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(5, 4))
    logp, grad = f(xs)
    logp_fn, dlogp_fn = rich.compile_logp(), rich.compile_dlogp()
    for r in range(5):
        p = {"mu": xs[r, :3], "s_log__": xs[r, 3]}
        assert logp[r] == pytest.approx(logp_fn(p), rel=1e-12)
        np.testing.assert_allclose(grad[r], dlogp_fn(p), rtol=1e-10)
    with pytest.raises(ValueError, match="points must have shape"):
        f(xs[:, :3])


def test_batched_mixture_logp_has_no_blockwise_loop():
    """pm.Mixture's LogSumExp is vectorised as a reduction, not a Blockwise loop; rows exact."""
    from pytensor.tensor.blockwise import Blockwise

    sd = np.array([0.5, 1.0, 2.0])
    with pm.Model() as model:
        pm.Mixture(
            "x",
            w=[0.3, 0.7],
            comp_dists=[pm.Normal.dist(-1.5 * sd, sd), pm.Normal.dist(1.5 * sd, sd)],
            shape=3,
        )
    f = BatchedLogpGrad(model, model.continuous_value_vars, model.initial_point(0))
    ops = [node.op for node in f._fn.maker.fgraph.toposort()]
    assert not any(isinstance(op, Blockwise) and "LogSumExp" in str(op) for op in ops)
    xs = np.random.default_rng(3).normal(size=(4, 3)) * 3
    logp, grad = f(xs)
    logp_fn, dlogp_fn = model.compile_logp(), model.compile_dlogp()
    for r in range(4):
        assert logp[r] == pytest.approx(logp_fn({"x": xs[r]}), rel=1e-12)
        np.testing.assert_allclose(grad[r], dlogp_fn({"x": xs[r]}), rtol=1e-10)


def test_log_accept_ratio_rows_are_independent():
    """Each row's ratio depends on that row alone, -inf where not finite, for every metric."""
    rng = np.random.default_rng(1)
    B, d = 6, 3
    args = [rng.normal(size=B), rng.normal(size=B)] + [rng.normal(size=(B, d)) for _ in range(4)]
    args[1][2] = np.nan
    inv_mass = rng.uniform(0.5, 2.0, size=d)
    a = rng.normal(size=(d, d))
    for metric in (Metric.identity(), Metric.diag(inv_mass), Metric.dense(a @ a.T + np.eye(d))):
        got = log_accept_ratio(*args, 0.3, metric)
        assert got[2] == -np.inf
        for r in range(B):
            want = log_accept_ratio(*(x[r : r + 1] for x in args), 0.3, metric)[0]
            assert got[r] == pytest.approx(want, rel=1e-12) or got[r] == want == -np.inf


def test_gap_noise_has_the_random_walk_law_at_the_fired_substeps():
    """Partial sums S_i = sum_{j<i} noise[j] at fired i and at K: Var S_i = i, Cov = min.

    One pattern (K = 8, midpoints 3 and 5 fire) in 40000 columns: the sample
    covariance of (S_3, S_5, S_8) must equal min(i, i') within 4 standard errors
    (the standard error of a sample covariance of Gaussians is
    sqrt((s_ii s_jj + s_ij^2) / n)). Rows between firings are zero.
    """
    K, C = 8, 40000
    mask = np.zeros((K, C), dtype=bool)
    mask[[3, 5]] = True
    noise = gap_noise(np.random.default_rng(0), mask, 1)[..., 0]
    assert np.all(noise[[1, 2, 4, 6, 7]] == 0)
    sums = np.cumsum(noise, axis=0)
    s = np.stack([sums[2], sums[4], sums[7]])  # S_3, S_5, S_8
    cov = np.cov(s)
    want = np.minimum.outer([3, 5, 8], [3, 5, 8]).astype(float)
    se = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / C)
    np.testing.assert_array_less(np.abs(cov - want), 4 * se)
    one = gap_noise(np.random.default_rng(1), np.zeros((1, 3), dtype=bool), 2)
    np.testing.assert_array_equal(one, np.random.default_rng(1).standard_normal((1, 3, 2)))


def test_adaptation_windows_follow_stan():
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert adaptation_windows(10) == []
    windows = adaptation_windows(100)  # short warm-up: 15% / 75% / 10%
    assert windows[0][0] == 15 and windows[-1][1] == 90


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_warmup_pools_the_window_within_rows(kind):
    """The window's covariances are each row's draws about that row's own mean, pooled
    over the rows (the spread between rows is left out), as numpy computes them."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 50, 3)) * [1.0, 2.0, 3.0] + rng.normal(size=(1, 50, 3)) * 10
    warmup = Warmup(3, step_size=0.1, adapt_step_size=False, target_accept=0.9, precondition=kind)
    for block in rows:
        warmup._accumulate(LangevinState(block, np.zeros(50), 2 * block))
    cov_x, cov_g = warmup._covariances()
    centred = (rows - rows.mean(axis=0)).reshape(-1, 3)
    want = centred.T @ centred / (7 * 50 - 50)
    if kind == "diag":
        want = np.diag(want)
    np.testing.assert_allclose(cov_x, want, rtol=1e-12)
    np.testing.assert_allclose(cov_g, 4 * want, rtol=1e-12)


def test_default_K_is_the_step_default():
    assert inspect.signature(PoissonMidpoint.__init__).parameters["K"].default == DEFAULT_K


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chains": 0}, "chains must be an integer >= 1, got 0"),
        ({"chains": 2.5}, "chains must be an integer >= 1, got 2.5"),
        ({"chains": True}, "chains must be an integer >= 1, got True"),
        ({"draws": 0}, "draws must be an integer >= 1, got 0"),
        ({"tune": -1}, "tune must be an integer >= 0, got -1"),
        ({"method": "nuts"}, "method must be one of 'pmm', 'lmc', 'rmm', 'upmm', 'ulmc'; got"),
        ({"method": "rmm", "K": 1}, "K must be an integer >= 2, got 1"),
        ({"initial_points": np.zeros((3, 2))}, r"initial_points must have shape \(chains, n_dim\)"),
        ({"K": 0}, "K must be an integer >= 1, got 0"),
        ({"K": 2.5}, "K must be an integer >= 1, got 2.5"),
        ({"method": "lmc", "K": 4}, "K must be None or 1 with method='lmc', got 4"),
        ({"step_size": -0.1}, "step_size must be a finite number > 0, got -0.1"),
        ({"step_size": np.inf}, "step_size must be a finite number > 0, got inf"),
        ({"step_size": float("nan")}, "step_size must be a finite number > 0, got nan"),
        ({"adapt_step_size": False}, "step_size=None needs adapt_step_size=True"),
        ({"target_accept": 1.0}, "target_accept must be a finite number > 0 and < 1, got 1.0"),
        ({"max_energy_error": 0}, "max_energy_error must be a finite number > 0, got 0"),
        ({"cores": 0}, "cores must be an integer >= 1, got 0"),
        ({"discard_tuned_samples": 1}, "discard_tuned_samples must be True or False, got 1"),
        ({"restart_stray_chains": "yes"}, "restart_stray_chains must be True or False"),
        ({"compute_convergence_checks": 0}, "compute_convergence_checks must be True or False"),
        ({"target_accept": True}, "target_accept must be a finite number"),
        ({"precondition": "full"}, "precondition must be 'auto', 'diag', 'dense' or None"),
        ({"backend": "jax"}, "backend must be one of 'numba', 'c'; got 'jax'"),
        ({"blocks_per_draw": 0}, "blocks_per_draw must be an integer >= 1, got 0"),
        ({"blocks_per_draw": 1.5}, "blocks_per_draw must be an integer >= 1, got 1.5"),
    ],
)
def test_bad_options_raise(gauss, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_chains(gauss, **kwargs)


def _rmm_stationary_variance(eta: float, K: int) -> float:
    """E[x^2] of the randomized midpoint method (grid of K times) on N(0, 1), exactly.

    One step is ``x' = A x + N`` with ``A = 1 - eta + eta^2 tau`` and
    ``N = sqrt(2) ((1 - eta) W_{tau eta} + (W_eta - W_{tau eta}))``, ``tau = i / K``,
    ``i`` uniform on ``0..K-1`` and independent of ``x``: ``V = E[N^2] / (1 - E[A^2])``.
    """
    tau = np.arange(K) / K
    a2 = np.mean((1 - eta + eta**2 * tau) ** 2)
    n2 = np.mean(2 * ((1 - eta) ** 2 * tau * eta + eta * (1 - tau)))
    return float(n2 / (1 - a2))


def test_rmm_matches_its_exact_stationary_law(gauss):
    """method="rmm", fixed eta = 0.5, M = I: the variances are sigma^2 V_rmm(eta / sigma^2).

    Tolerance: 4 standard errors of the mean over independent chains of their time
    averages of x^2. At eta = 0.5 on the unit coordinate LMC's variance (4/3) and PMM's
    differ from RMM's (1.037) by many standard errors, so a wrong law cannot pass.
    Started at exact draws of the target (``initial_points``) with no warm-up.
    """
    eta, chains, draws = 0.5, 200, 600
    start = np.random.default_rng(3).normal(size=(chains, 2)) * SIGMA
    idata = sample_chains(
        gauss,
        chains=chains,
        draws=draws,
        tune=0,
        method="rmm",
        step_size=eta,
        adapt_step_size=False,
        initial_points=start,
        random_seed=5,
        compute_convergence_checks=False,
    )
    x = idata.posterior["x"].values
    _, m2 = _per_chain_moments(x)
    expected = SIGMA**2 * np.array([_rmm_stationary_variance(eta / s**2, 64) for s in SIGMA])
    se2 = m2.std(axis=0, ddof=1) / np.sqrt(chains)
    np.testing.assert_array_less(np.abs(m2.mean(axis=0) - expected), 4 * se2)
    assert abs(exact_stationary_variance(eta, 1) - expected[0]) > 10 * se2[0]
    n_steps = idata.sample_stats["n_steps"].values
    assert abs(n_steps.mean() - (2 - 1 / 64)) < 0.02  # one midpoint (but at tau = 0) + proposal
    np.testing.assert_array_equal(idata.sample_stats["step_size"].values, eta)


def test_reuse_compiled_compiles_once_and_changes_no_draw(gauss, monkeypatch):
    """Inside reuse_compiled two runs build the batched logp once; the draws are the same."""
    import pmm_pymc.mcmc.chains as chains_module

    kw = {"chains": 4, "draws": 5, "tune": 0, "step_size": 0.1, "adapt_step_size": False}
    plain = sample_chains(gauss, random_seed=3, compute_convergence_checks=False, **kw)
    built = []
    original = chains_module.BatchedLogpGrad

    def counting(*args, **kwargs):
        built.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(chains_module, "BatchedLogpGrad", counting)
    with chains_module.reuse_compiled():
        runs = [
            sample_chains(gauss, random_seed=3, compute_convergence_checks=False, **kw)
            for _ in range(2)
        ]
    assert len(built) == 1
    for run in runs:
        np.testing.assert_array_equal(run.posterior["x"].values, plain.posterior["x"].values)
    assert chains_module._reused is None  # the block's functions are released


def test_initial_points_are_the_first_state(gauss):
    """With initial_points and no warm-up, the chains start exactly there."""
    start = np.array([[50.0, -50.0], [0.0, 0.0]])
    idata = sample_chains(
        gauss,
        chains=2,
        draws=1,
        tune=0,
        method="lmc",
        step_size=1e-8,
        adapt_step_size=False,
        initial_points=start,
        random_seed=0,
        compute_convergence_checks=False,
    )
    np.testing.assert_allclose(idata.posterior["x"].values[:, 0], start, atol=1e-3)


def test_discrete_variables_raise():
    with pm.Model() as model:
        pm.Normal("x", 0, 1)
        pm.Poisson("k", 3.0)
    with pytest.raises(ValueError, match=r"discrete variable\(s\) \['k'\]"):
        sample_chains(model, chains=2, draws=2, tune=0)


def test_model_without_free_variables_raises():
    with pm.Model() as model:
        pm.Normal("y", 0, 1, observed=[0.5])
    with pytest.raises(ValueError, match="needs a model with a continuous free variable"):
        sample_chains(model, chains=2, draws=2, tune=0)


def test_bad_initial_point_raises():
    """A start with a non-finite log density is PyMC's SamplingError naming the variable."""
    with pm.Model() as model:
        pm.HalfNormal("s", 1.0, initval=-1.0, default_transform=None)
    with pytest.raises(pm.exceptions.SamplingError, match="s"):
        sample_chains(model, chains=2, draws=2, tune=0, jitter=False)


def test_core_fast_paths_equal_the_general_ones():
    """pmm_step's faster internals (torch index_put, memoised weights) change no number.

    The torch update is compared with the numpy one (np.add.at, the general path)
    with repeated rows, and the memoised correction weights with a fresh computation,
    also for coefficients given as lists (not hashable, so not memoised).
    """
    torch = pytest.importorskip("torch")
    from pmm_pymc.core import (
        AffineChain,
        _cached_correction_weights,
        _index_add,
        correction_weights,
    )

    rng = np.random.default_rng(0)
    target, values = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    index = np.array([0, 2, 2, 5, 0])
    want = _index_add(np, target, index, values)
    got = _index_add(
        torch, torch.as_tensor(target), torch.as_tensor(index), torch.as_tensor(values)
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-15, atol=1e-15)
    chain = AffineChain(a=(1.1, 0.9, 1.0), g=(0.1, 0.2, 0.3), s=(1.0, 1.0, 1.0))
    assert _cached_correction_weights(chain) == correction_weights(chain)
    assert _cached_correction_weights(chain) == _cached_correction_weights(chain)
    as_lists = AffineChain(a=[1.1, 0.9, 1.0], g=[0.1, 0.2, 0.3], s=[1.0, 1.0, 1.0])
    assert _cached_correction_weights(as_lists) == correction_weights(chain)


def test_unvectorisable_graph_falls_back_to_per_chain_calls(gauss, monkeypatch):
    """Where vectorize_graph fails, a warning, then the looped path: the same draws.

    The looped path calls the single-point compiled function row by row; with one
    seed it must give the vectorised run's draws up to floating-point rounding.
    """
    import pmm_pymc.mcmc.chains as chains_module

    kw = {"chains": 3, "draws": 5, "tune": 30, "random_seed": 9}
    want = sample_chains(gauss, **kw).posterior["x"].values

    def refuse(*args, **kwargs):
        raise NotImplementedError("no vectorisation rule")

    monkeypatch.setattr(chains_module, "vectorize_graph", refuse)
    with pytest.warns(UserWarning, match="could not be vectorised"):
        got = sample_chains(gauss, **kw).posterior["x"].values
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# --- nothing lost, nothing silent ------------------------------------------------------------

_INTERRUPTED_SCRIPT = r"""
import os, signal, sys, threading, time
import numpy as np
import pymc as pm
from pmm_pymc.mcmc.chains import sample_chains

with pm.Model() as model:
    pm.Normal("x", 0.0, 1.0, shape=3)
sample_chains(model, chains=4, draws=2, tune=0, random_seed=0)  # compile before the clock
print("ready", flush=True)
# a real SIGINT from another thread, as Ctrl-C sends it, once sampling is under way
threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
idata = sample_chains(model, chains=4, draws=10**7, tune=50, random_seed=1)
post = idata["posterior"]
print("draws", post.sizes["draw"], "chains", post.sizes["chain"],
      "interrupted", idata["sample_stats"].attrs["interrupted"],
      "finite", bool(np.isfinite(post["x"].values).all()), flush=True)
"""


def test_ctrl_c_keeps_the_draws_made_so_far(tmp_path):
    """A real SIGINT in a real process: sample_chains returns what it has, with a warning."""
    import subprocess
    import sys

    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1].split()
    fields = dict(zip(last[::2], last[1::2]))
    assert 0 < int(fields["draws"]) < 10**7 and fields["chains"] == "4"
    assert fields["interrupted"] == "1" and fields["finite"] == "True"
    assert "sample_chains was interrupted after" in done.stderr
    assert "each of the 4 chains has" in done.stderr


def test_interrupt_during_warmup_keeps_each_chains_point(monkeypatch, caplog):
    """Ctrl-C before the first kept draw (warm-up draws discarded) returns each chain's current
    point as one draw, with the warning saying so, instead of failing on an empty posterior."""
    import pmm_pymc.mcmc.chains as chains_module

    real_advance = chains_module.advance
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_advance(*args, **kwargs)

    monkeypatch.setattr(chains_module, "advance", interrupting)
    with pm.Model() as model:
        pm.Normal("x", 0.0, 1.0, shape=2)
    with caplog.at_level(logging.WARNING, logger="pymc"):
        idata = sample_chains(model, chains=3, draws=10, tune=20, random_seed=0)
    post = idata["posterior"]
    assert post.sizes["draw"] == 1 and post.sizes["chain"] == 3
    assert np.isfinite(post["x"].values).all()
    assert idata["sample_stats"].attrs["interrupted"] == 1
    assert "its current point in the unfinished warm-up" in caplog.text


def test_convergence_checks_warn_as_pm_sample_does(caplog):
    """A start far out and a short warm-up: the chains have not met, and PyMC's own checks
    say so (R-hat) instead of returning a wrong posterior silently."""
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 100.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", mu, sigma, observed=np.random.default_rng(0).normal(0.0, 0.7, 50))
    with caplog.at_level(logging.INFO, logger="pymc"):
        sample_chains(
            model,
            chains=4,
            draws=200,
            tune=0,
            initvals={"mu": 100.0},
            step_size=1e-4,
            random_seed=0,
        )
    assert "rhat statistic is larger" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pymc"):
        sample_chains(
            model,
            chains=4,
            draws=200,
            tune=0,
            initvals={"mu": 100.0},
            step_size=1e-4,
            random_seed=0,
            compute_convergence_checks=False,
        )
    assert "rhat" not in caplog.text


@pytest.mark.parametrize("method", ["pmm", "lmc"])
def test_blocks_per_draw_records_every_nth_state(gauss, method):
    """``blocks_per_draw=n`` keeps every n-th state of the unthinned run, bit for bit.

    Fixed step, nothing adapting, the same seed: the generator is consumed in the same
    order, so the thinned draws are the unthinned draws n-1, 2n-1, ...; ``n_steps`` and
    ``n_midpoints`` of a thinned draw are the sums over its n transitions.
    """
    n, m = 3, 20
    kw = {
        "chains": 5,
        "tune": 0,
        "method": method,
        "step_size": 0.5,
        "adapt_step_size": False,
        "precondition": None,
        "random_seed": 4,
        "compute_convergence_checks": False,
    }
    one = sample_chains(gauss, draws=n * m, **kw)
    thinned = sample_chains(gauss, draws=m, blocks_per_draw=n, **kw)
    x1, xn = one.posterior["x"].values, thinned.posterior["x"].values
    np.testing.assert_array_equal(xn, x1[:, n - 1 :: n])
    for stat in ["n_steps"] + (["n_midpoints"] if method == "pmm" else []):
        per_block = one.sample_stats[stat].values.reshape(5, m, n).sum(axis=2)
        np.testing.assert_array_equal(thinned.sample_stats[stat].values, per_block)
    assert (thinned.sample_stats["n_steps"].values >= n).all()


def test_blocks_per_draw_lays_the_warmup_out_in_transitions(gauss, monkeypatch):
    """The warm-up's windows are laid out for ``tune * n`` transitions and it is updated
    after each of them."""
    seen = {}
    original = Warmup.reset

    def reset(self, n_tune):
        seen["n_tune"] = n_tune
        original(self, n_tune)

    def finish(self, _finish=Warmup.finish):
        seen["iteration"] = self.iteration
        return _finish(self)

    monkeypatch.setattr(Warmup, "reset", reset)
    monkeypatch.setattr(Warmup, "finish", finish)
    sample_chains(gauss, chains=4, tune=50, draws=5, blocks_per_draw=4, random_seed=0)
    assert seen == {"n_tune": 200, "iteration": 200}
