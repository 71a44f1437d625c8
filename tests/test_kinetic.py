"""Kinetic (underdamped) Langevin: the matrix-coefficient core, the exact stationary law."""

from __future__ import annotations

import itertools

import numpy as np
import pymc as pm
import pytest

from pmm_pymc.core import (
    AffineChain,
    MatrixCoefficient,
    correction_weights,
    fired_from_mask,
    kinetic_langevin_chain,
    kinetic_step,
    pmm_step,
)
from pmm_pymc.mcmc.chains import sample_chains
from pmm_pymc.mcmc.kernel import (
    LangevinParams,
    LangevinState,
    Metric,
    draw,
    kinetic_log_accept_ratio,
    kinetic_stability_limit,
    refresh_velocity,
    transition,
)
from pmm_pymc.mcmc.steps import LangevinMC, UnderdampedLangevin, UnderdampedPoissonMidpoint
from pmm_pymc.mcmc.warmup import energy_statistic


def exact_kinetic_covariance(eta: float, friction: float, K: int) -> np.ndarray:
    """Stationary covariance of (u, v) under kinetic PMM(eta, K) on N(0, 1), exactly.

    Derivation (independent of the core's loop): with the drift b(u) = -u = -e1 X frozen at
    X = (u, v), the sub-step X -> a X + g b + s z (:func:`kinetic_step`) rolls out to
    X̂_i = P_i X + sum_{j<i} a^(i-1-j) s z_j with P_i = a^i - sum_{j<i} a^j g e1. The fired
    midpoint i adds K a^(K-1-i) g (b(û_i) - b(u)) = -K W_i e1 (X̂_i - X) to the endpoint,
    so given the firing pattern the block is X' = A X + sum_j C_j s z_j with

        A   = P_K - K sum_{fired i} W_i e1 (P_i - I),
        C_j = a^(K-1-j) - K sum_{fired i > j} W_i e1 a^(i-1-j),     W_i = a^(K-1-i) g.

    X is independent of the pattern and the noise, so the stationary covariance S solves the
    discrete Lyapunov equation S = E[A S A^T] + E[sum_j C_j s s^T C_j^T], the expectations
    being exact sums over the 2^(K-1) patterns (each midpoint fires with probability 1/K).
    """
    a, g, s = kinetic_step(eta / K, friction)
    e1 = np.array([[1.0, 0.0]])
    power = [np.linalg.matrix_power(a, n) for n in range(K + 1)]
    P = [np.eye(2)]
    for i in range(1, K + 1):
        P.append(power[i] - sum(power[j] @ g @ e1 for j in range(i)))
    W = [power[K - 1 - i] @ g for i in range(K)]
    transfer, noise = np.zeros((4, 4)), np.zeros((2, 2))
    for pattern in itertools.product((0, 1), repeat=K - 1):
        fired = [i + 1 for i, h in enumerate(pattern) if h]
        prob = np.prod([1 / K if h else 1 - 1 / K for h in pattern])
        A = P[K] - K * sum((W[i] @ e1 @ (P[i] - np.eye(2)) for i in fired), np.zeros((2, 2)))
        for j in range(K):
            C = power[K - 1 - j] - K * sum(
                (W[i] @ e1 @ power[i - 1 - j] for i in fired if i > j), np.zeros((2, 2))
            )
            noise += prob * (C @ s) @ (C @ s).T
        transfer += prob * np.kron(A, A)
    return np.linalg.solve(np.eye(4) - transfer, noise.reshape(-1)).reshape(2, 2)


def test_exact_covariance_of_one_obabo_step_is_the_leapfrog_value():
    """K = 1 is OBABO: on N(0, 1) its position variance is 1 / (1 - eta^2/4) exactly.

    (The leapfrog step's modified energy on the harmonic oscillator; the friction drops out.)
    """
    for eta, friction in [(0.5, 1.0), (1.2, 3.0)]:
        S = exact_kinetic_covariance(eta, friction, 1)
        assert S[0, 0] == pytest.approx(1 / (1 - eta**2 / 4), rel=1e-12)


def test_sub_step_is_b_o_b_a_written_out():
    """The affine sub-step equals the four OBABO moves done one after the other."""
    rng = np.random.default_rng(0)
    h, friction = 0.3, 1.7
    u, v, z = rng.standard_normal(3)

    def b(p):
        return -np.sin(p) - p

    e = np.exp(-friction * h)
    w = v + h / 2 * b(u)
    w = e * w + np.sqrt(1 - e**2) * z
    w = w + h / 2 * b(u)
    expected = np.array([u + h * w, w])
    a, g, s = kinetic_step(h, friction)
    got = a @ np.array([u, v]) + g[:, 0] * b(u) + s[:, 0] * z
    np.testing.assert_allclose(got, expected, rtol=1e-14)


@pytest.mark.parametrize("all_fired", [True, False])
def test_matrix_core_equals_the_fine_chain_with_substituted_drifts(all_fired):
    """The generalised core against a plain loop of the fine chain.

    PMM's block is affine in its drift inputs, so it must equal the fine chain run with the
    drift values b0 + K H_i (b(x̂_i) - b0) at each sub-step (H_i: fired), the loop written
    here from the definition with generic 2x2 coefficients (per member for the second one).
    """
    rng = np.random.default_rng(1)
    K, B, d = 5, 3, 4
    a = [rng.normal(size=(2, 2)) * 0.3 + np.eye(2) for _ in range(K)]
    g = [rng.normal(size=(2, 1)) for _ in range(K)]
    s = [rng.normal(size=(2, 1)) for _ in range(K)]
    a[1] = np.stack([a[1] * (1 + 0.1 * m) for m in range(B)])  # per-member coefficient
    chain = AffineChain(*(tuple(MatrixCoefficient(m) for m in c) for c in (a, g, s)))

    def b(points):  # the drift sees the whole (u, v) and returns (n, 1, d)
        return (np.tanh(points[:, :1]) - 0.5 * points[:, 1:]) * 2.0

    x = rng.standard_normal((B, 2, d))
    Z = rng.standard_normal((K, B, 1, d))
    mask = np.ones((K, B), dtype=bool) if all_fired else rng.random((K, B)) < 0.5
    mask[0] = False
    out, info = pmm_step(lambda p, grp: b(p), x, b(x), Z, fired_from_mask(mask), chain)

    def mult(m, v):  # m (2, c) or (B, 2, c) applied per member to v (B, c, d)
        return np.einsum("...rc,...cd->...rd", m, v)

    b0 = b(x)
    frozen = [x]
    for i in range(K):
        frozen.append(mult(a[i], frozen[-1]) + mult(g[i], b0) + mult(s[i], Z[i]))
    ref = x
    for i in range(K):
        bi = b0 + K * mask[i][:, None, None] * (b(frozen[i]) - b0)
        ref = mult(a[i], ref) + mult(g[i], bi) + mult(s[i], Z[i])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(info.endpoint, frozen[-1], rtol=1e-12, atol=1e-12)
    assert info.n_evals == int(mask[1:].sum())
    # the weights are the products A_{K-1} ... A_{i+1} G_i K, per member where a[1] enters
    w = correction_weights(chain)
    np.testing.assert_allclose(w[2].m, K * a[4] @ a[3] @ g[2], rtol=1e-13)
    assert w[0].m.shape == (B, 2, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_size": 0.0, "friction": 1.0}, "step_size"),
        ({"step_size": np.array([0.1, -1.0]), "friction": 1.0}, "step_size"),
        ({"step_size": 0.1, "friction": 0.0}, "friction"),
        ({"step_size": 0.1, "friction": float("nan")}, "friction"),
        ({"step_size": 0.1, "friction": 1.0, "K": 0}, "K"),
    ],
)
def test_kinetic_chain_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kinetic_langevin_chain(**kwargs)


def _gauss(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return -0.5 * np.einsum("ij,ij->i", points, points), -points


@pytest.mark.parametrize(("K", "per_row"), [(1, False), (4, False), (4, True)])
def test_kernel_has_the_exact_stationary_covariance(K, per_row):
    """The kinetic transition on N(0, I_16), eta = 1, gamma = 1: E[(u, v)(u, v)^T] exactly.

    Tolerance: 4 standard errors from batch means over 40 batches of 50 transitions of 64
    rows (the chain forgets in a few 1/gamma). The exact value at K = 4 is about 30 standard
    errors from K = 1's (1.085 against 1.333 for E[u^2]), so the wrong law cannot pass.
    """
    d, B, eta, friction = 16, 64, 1.0, 1.0
    rng = np.random.default_rng(K + per_row)
    metric = Metric.identity()
    x = rng.standard_normal((B, d))
    state = LangevinState(x, *_gauss(x), refresh_velocity(rng, metric, B, d))
    step = np.full(B, eta) if per_row else eta
    params = LangevinParams(step, K, metric, friction=np.full(B, friction) if per_row else friction)
    moments = []
    for it in range(2100):
        state, info = transition(
            _gauss, draw(rng, K, B, d, adjust=False, kinetic=True), state, params
        )
        assert not info.diverging.any()
        if it >= 100:
            u, v = state.x, state.v
            moments.append([(u * u).mean(), (u * v).mean(), (v * v).mean()])
    batches = np.asarray(moments).reshape(40, -1, 3).mean(axis=1)
    mean, se = batches.mean(axis=0), batches.std(axis=0, ddof=1) / np.sqrt(40)
    S = exact_kinetic_covariance(eta, friction, K)
    exact = np.array([S[0, 0], S[0, 1], S[1, 1]])
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    if K > 1:
        assert abs(mean[0] - exact_kinetic_covariance(eta, friction, 1)[0, 0]) > 15 * se[0]


def test_energy_error_vanishes_with_the_step_like_a_leapfrogs():
    """On N(0, 1) the would-be energy error of one OBABO step shrinks like eta^3 per move.

    Its mean over moves drawn from the stationary law is of order eta^4 (d = 1 leapfrog),
    the mean absolute value of order eta^3: halving eta must shrink the mean |error| by
    about 8 (between 5 and 11 allowing Monte-Carlo error over 20,000 moves).
    """
    rng = np.random.default_rng(3)
    metric = Metric.identity()
    errs = []
    for eta in (0.2, 0.1):
        B = 20000
        x = rng.standard_normal((B, 1))
        state = LangevinState(x, *_gauss(x), refresh_velocity(rng, metric, B, 1))
        params = LangevinParams(eta, 1, metric, friction=1.0)
        new, info = transition(
            _gauss, draw(rng, 1, B, 1, adjust=False, kinetic=True), state, params
        )
        direct = -kinetic_log_accept_ratio(
            state.logp, new.logp, state.x, new.x, state.grad, new.grad, eta, metric
        )
        np.testing.assert_allclose(info.energy_error, direct)
        errs.append(np.abs(info.energy_error).mean())
    assert 5 < errs[0] / errs[1] < 11, errs


def test_kinetic_transition_needs_velocities_and_kinetic_noise():
    x = np.zeros((2, 3))
    state = LangevinState(x, *_gauss(x))
    params = LangevinParams(0.5, 2, Metric.identity(), friction=1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="velocities"):
        transition(_gauss, draw(rng, 2, 2, 3, adjust=False, kinetic=True), state, params)
    with pytest.raises(ValueError, match="gap noise"):
        draw(rng, 2, 2, 3, adjust=False, kinetic=True, gap=True)


# --- stability ---------------------------------------------------------------------------------


def _second_moment_radius(eta: float, friction: float, K: int) -> float:
    """Spectral radius of E[A (x) A] by enumerating the firing patterns (as in the covariance)."""
    a, g, _ = kinetic_step(eta / K, friction)
    e1 = np.array([[1.0, 0.0]])
    power = [np.linalg.matrix_power(a, n) for n in range(K + 1)]
    P = [np.eye(2)] + [power[i] - sum(power[j] @ g @ e1 for j in range(i)) for i in range(1, K + 1)]
    transfer = np.zeros((4, 4))
    for pattern in itertools.product((0, 1), repeat=K - 1):
        fired = [i + 1 for i, h in enumerate(pattern) if h]
        prob = np.prod([1 / K if h else 1 - 1 / K for h in pattern])
        A = P[K] - K * sum(
            (power[K - 1 - i] @ g @ e1 @ (P[i] - np.eye(2)) for i in fired), np.zeros((2, 2))
        )
        transfer += prob * np.kron(A, A)
    return float(np.max(np.abs(np.linalg.eigvals(transfer))))


@pytest.mark.parametrize(("K", "friction_time"), [(1, 0.5), (4, 0.05), (4, 1.0), (8, 0.3)])
def test_stability_limit_is_where_the_second_moment_stops_contracting(K, friction_time):
    """kinetic_stability_limit against the enumerated transfer matrix: stable 2 % below it,
    unstable 2 % above (the limit is a root found by bisection to 1e-8)."""
    limit = kinetic_stability_limit(K, friction_time)
    for factor, stable in ((0.98, True), (1.02, False)):
        eta = factor * limit
        assert (_second_moment_radius(eta, friction_time / eta, K) < 1.0) is stable
    if K == 1:
        assert limit == pytest.approx(2.0, abs=1e-6)  # the leapfrog's limit


def test_guard_falls_back_to_obabo_outside_pmms_stability_region():
    """N(0, 1/L) with eta sqrt(L) = 1.5, gamma eta = 0.1, K = 8: outside kinetic PMM's region
    (limit about 1.0) but inside OBABO's (2). The guard takes the OBABO endpoint whenever a
    midpoint fired, so the chain stays finite with E[u^2] L of order 1 (OBABO's exact value
    is 1 / (1 - 1.5^2/4) = 2.29; the guard fires only when the secant sees the curvature, so
    the bound allows 2x)."""
    L, eta, K, d, B = 100.0, 0.15, 8, 4, 32
    friction = 0.1 / eta
    assert kinetic_stability_limit(K, 0.1) < 1.2

    def stiff(points):
        return -0.5 * L * np.einsum("ij,ij->i", points, points), -L * points

    rng = np.random.default_rng(5)
    metric = Metric.identity()
    x = rng.standard_normal((B, d)) / np.sqrt(L)
    state = LangevinState(x, *stiff(x), refresh_velocity(rng, metric, B, d))
    params = LangevinParams(eta, K, metric, friction=friction)
    fell_back, squares = 0, []
    for it in range(600):
        state, info = transition(
            stiff, draw(rng, K, B, d, adjust=False, kinetic=True), state, params
        )
        fell_back += int(info.fallback.sum())
        if it >= 100:
            squares.append(float((state.x**2).mean()) * L)
    assert np.all(np.isfinite(squares))
    assert fell_back > 0
    assert np.mean(squares) < 2 * 2.29


# --- PyMC step methods and sample_chains ----------------------------------------------------


SAMPLE_KW = {"progressbar": False, "compute_convergence_checks": False}


@pytest.fixture(scope="module")
def small_model():
    with pm.Model() as model:
        s = pm.HalfNormal("s", 1.0)
        pm.StudentT("z", nu=4.0, mu=0.0, sigma=s, shape=(2, 2))
    return model


@pytest.mark.parametrize("cls", [UnderdampedLangevin, UnderdampedPoissonMidpoint])
def test_kinetic_step_samples_a_correlated_gaussian(cls):
    """Means within 0.15 sd and sds within 10 % on a 2-d Gaussian with correlation -0.99
    after the default warm-up (2 chains x 1500 draws: the Monte-Carlo error of a mean is about
    0.05 sd at the ESS these reach, and the default's bias on the sd is below 5 %)."""
    cov = np.array([[1.0, -0.99 * 3.0], [-0.99 * 3.0, 9.0]])
    with pm.Model():
        pm.MvNormal("x", mu=np.array([1.0, -2.0]), cov=cov)
        idata = pm.sample(
            1500, tune=1000, chains=2, cores=1, step=cls(), random_seed=11, **SAMPLE_KW
        )
    draws = idata.posterior["x"].values.reshape(-1, 2)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(axis=0) - [1.0, -2.0]) / sd < 0.15)
    assert np.all(np.abs(draws.std(axis=0) / sd - 1) < 0.10)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    expected_steps = 1.0 if cls is UnderdampedLangevin else 2 - 1 / 4
    assert float(idata.sample_stats["n_steps"].mean()) == pytest.approx(expected_steps, abs=0.05)


def test_sample_chains_kinetic_fixed_step_has_the_exact_stationary_covariance():
    """sample_chains(method='upmm') with a fixed step, no preconditioner and a fixed friction on
    N(0, I): E[u^2] is the exact covariance's (Lyapunov, above); 4 standard errors over the
    independent chains' time averages."""
    eta, friction, K = 1.0, 1.0, 4
    with pm.Model() as model:
        pm.Normal("x", 0.0, 1.0, shape=3)
    idata = sample_chains(
        model,
        chains=256,
        draws=400,
        tune=0,
        method="upmm",
        K=K,
        step_size=eta,
        adapt_step_size=False,
        precondition=None,
        friction=friction,
        random_seed=2,
        compute_convergence_checks=False,
    )
    m2 = (idata.posterior["x"].values[:, 50:] ** 2).mean(axis=(1, 2))
    exact = exact_kinetic_covariance(eta, friction, K)[0, 0]
    se = m2.std(ddof=1) / np.sqrt(m2.size)
    assert abs(m2.mean() - exact) < 4 * se, (m2.mean(), exact, se)
    assert abs(m2.mean() - exact_kinetic_covariance(eta, friction, 1)[0, 0]) > 10 * se
    assert float(idata.sample_stats["friction"].mean()) == friction


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"friction": 0.0}, "friction must be a finite number > 0, got 0.0"),
        ({"friction": -1.0}, "friction must be a finite number > 0"),
        ({"friction": "1"}, "friction must be a finite number"),
        ({"energy_var_target": 0}, "energy_var_target must be a finite number > 0, got 0"),
        ({"K": 0}, "K must be an integer >= 1, got 0"),
        ({"target_accept": 1.5}, "target_accept must be a finite number > 0 and < 1"),
        ({"accuracy": 0.02}, "accuracy=0.02 is calibrated for overdamped Langevin"),
    ],
)
def test_kinetic_bad_options(small_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnderdampedPoissonMidpoint(model=small_model, **kwargs)
    with pytest.raises(ValueError, match=match):
        sample_chains(small_model, method="upmm", chains=2, draws=2, **kwargs)


def test_kinetic_options_belong_to_the_kinetic_methods(small_model):
    with pytest.raises(ValueError, match="friction and energy_var_target are options of"):
        sample_chains(small_model, method="pmm", friction=1.0, chains=2, draws=2)
    with pytest.raises(ValueError, match="K must be None or 1 with method='ulmc', got 4"):
        sample_chains(small_model, method="ulmc", K=4, chains=2, draws=2)
    with pytest.raises(TypeError):
        LangevinMC(model=small_model, friction=1.0)


def test_energy_statistic_centres_on_the_target():
    """Its mean is 1/2 when E[e^2]/d is the target: 0.01 is 6 standard errors of the mean of
    200,000 values (sd 0.71), and the clip moves it by under 1e-5."""
    rng = np.random.default_rng(0)
    d, target = 10, 5e-4
    e = rng.standard_normal(200_000) * np.sqrt(d * target)
    assert energy_statistic(e, d, target).mean() == pytest.approx(0.5, abs=0.01)
    assert energy_statistic(np.array([np.inf, np.nan]), d, target).tolist() == [-9.0, -9.0]
