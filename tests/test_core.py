"""The PMM core update: exact algebra, the stationary-variance check, numpy == torch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pmm_pymc.core import (
    AffineChain,
    correction_weights,
    fired_from_mask,
    langevin_chain,
    pmm_step,
)


def exact_stationary_variance(eta: float, K: int) -> float:
    """Stationary variance of PMM(eta, K) on N(0, 1) with drift b(x) = -x.

    Derivation: the rollout gives x̂_i = x - (i eta/K) x + sqrt(2 eta/K) S_i with
    S_i = sum_{j<i} Z_j, so the drift at a fired midpoint is b_i = -x̂_i and the
    update is x' = A x + B with

        A = 1 - eta + eta^2 * sum_{fired i} i/K,
        B = sqrt(2 eta/K) * sum_{j<K} c_j Z_j,  c_j = 1 - eta * #{fired i > j}.

    Given the fired pattern H, A is fixed and B is centred Gaussian with
    E[B^2 | H] = (2 eta/K) sum_j c_j^2; x is independent of (A, B) and has mean 0,
    so the stationary variance V solves V = E[A^2] V + E[B^2]. The expectations
    are exact sums over the 2^(K-1) patterns of H_1..H_{K-1}. K = 1 is LMC:
    V = 2 eta / (1 - (1 - eta)^2) = 1 / (1 - eta/2).
    """
    EA2 = 0.0
    EB2 = 0.0
    p = 1.0 / K
    for pattern in itertools.product((0, 1), repeat=K - 1):
        fired = [i + 1 for i, h in enumerate(pattern) if h]
        prob = np.prod([p if h else 1.0 - p for h in pattern])
        A = 1.0 - eta + eta**2 * sum(i / K for i in fired)
        c = [1.0 - eta * sum(1 for i in fired if i > j) for j in range(K)]
        EA2 += prob * A * A
        EB2 += prob * (2.0 * eta / K) * sum(cj * cj for cj in c)
    return EB2 / (1.0 - EA2)


def test_exact_variance_helper_matches_known_values():
    # The values quoted in the issue; LMC's is closed-form.
    assert exact_stationary_variance(0.2, 1) == pytest.approx(1 / (1 - 0.1), rel=1e-12)
    assert exact_stationary_variance(0.2, 8) == pytest.approx(1.0277, abs=5e-5)
    # LMC at eta/8 is the fine chain PMM stands in for.
    assert 1 / (1 - 0.2 / 16) == pytest.approx(1.0127, abs=5e-5)


def _run_gaussian_chains(eta, K, n_chains, n_burn, n_keep, seed):
    """Batch of independent chains on N(0,1) through pmm_step; per-chain second moments."""
    rng = np.random.default_rng(seed)
    chain = langevin_chain(eta, K)

    def drift(points, groups):
        return -points

    x = rng.standard_normal((n_chains, 1))
    acc = np.zeros(n_chains)
    for t in range(n_burn + n_keep):
        noise = rng.standard_normal((K, n_chains, 1))
        mask = rng.random((K, n_chains)) < 1.0 / K
        x, _ = pmm_step(drift, x, -x, noise, fired_from_mask(mask), chain)
        if t >= n_burn:
            acc += x[:, 0] ** 2
    return acc / n_keep


@pytest.mark.parametrize(("K", "expected"), [(1, 1.0 / (1 - 0.1)), (8, None)])
def test_stationary_variance_matches_exact(K, expected):
    """Sampled stationary variance vs the exact value.

    Tolerance: 4 Monte-Carlo standard errors. The chains are independent, so the
    standard error of the mean of the per-chain time averages is their sd over
    sqrt(n_chains) (time correlation within a chain is inside each average).
    The burn-in of 60 steps shrinks the start's influence by (1-eta)^120 < 1e-11.
    """
    eta = 0.2
    exact = exact_stationary_variance(eta, K)
    if expected is not None:
        assert exact == pytest.approx(expected, rel=1e-12)
    m2 = _run_gaussian_chains(eta, K, n_chains=4000, n_burn=60, n_keep=200, seed=11 + K)
    mcse = m2.std(ddof=1) / np.sqrt(m2.size)
    assert abs(m2.mean() - exact) < 4 * mcse, (m2.mean(), exact, mcse)
    if K == 8:
        # PMM must be distinguishable from the coarse LMC chain it improves on.
        assert abs(m2.mean() - 1 / (1 - eta / 2)) > 10 * mcse


def test_pmm_step_matches_the_issue_formula():
    """x' = x + eta b0 + eta sum_fired (b_i - b0) + sqrt(2 eta/K) sum_j Z_j."""
    rng = np.random.default_rng(0)
    eta, K, d = 0.3, 5, 3

    def b(z):
        return -np.sin(z) - 0.5 * z**3

    x = rng.standard_normal((1, d))
    Z = rng.standard_normal((K, 1, d))
    mask = np.zeros((K, 1), dtype=bool)
    mask[[1, 3, 4], 0] = True
    out, info = pmm_step(
        lambda p, g: b(p), x, b(x), Z, fired_from_mask(mask), langevin_chain(eta, K)
    )
    h = eta / K
    mids = [x + i * h * b(x) + np.sqrt(2 * h) * Z[:i].sum(axis=0) for i in range(K)]
    expected = (
        x
        + eta * b(x)
        + eta * sum(b(mids[i]) - b(x) for i in (1, 3, 4))
        + np.sqrt(2 * h) * Z.sum(axis=0)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)
    assert info.n_evals == 3
    assert [i for i, _ in info.groups] == [1, 3, 4]


def test_general_affine_correction_equals_fine_chain_with_substituted_drifts():
    """Independent check of the weights (prod_{r>i} a_r) g_i K.

    The fine chain is affine in its drift inputs, so PMM's output must equal the
    fine chain run with the drift *values* b0 + K H_i (b(x̂_i, i) - b0) put in
    at each sub-step. That reference is a plain loop written here from the
    definition, not from the core.
    """
    rng = np.random.default_rng(1)
    K, B, d = 6, 4, 2
    a = tuple(1.0 + 0.05 * rng.random(K))
    g = tuple(-0.1 * rng.random(K))
    s = tuple(0.2 * rng.random(K))
    chain = AffineChain(a, g, s)

    def b(z, i):
        return np.tanh(z) * (1 + i) - z

    x = rng.standard_normal((B, d))
    Z = rng.standard_normal((K, B, d))
    mask = rng.random((K, B)) < 0.5
    mask[0] = False

    def drift(points, groups):
        ts = np.concatenate([np.full(idx.shape[0], i) for i, idx in groups])
        return b(points, ts[:, None])

    out, info = pmm_step(drift, x, b(x, 0), Z, fired_from_mask(mask), chain)

    b0 = b(x, 0)
    frozen = [x]
    for i in range(K):
        frozen.append(a[i] * frozen[-1] + g[i] * b0 + s[i] * Z[i])
    ref = x
    for i in range(K):
        bi = b0 + K * mask[i][:, None] * (b(frozen[i], i) - b0)
        ref = a[i] * ref + g[i] * bi + s[i] * Z[i]
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(info.endpoint, frozen[-1], rtol=1e-12)
    assert info.n_evals == int(mask[1:].sum())


def test_correction_weights_closed_form():
    chain = AffineChain(a=(2.0, 3.0, 5.0), g=(1.0, 1.0, 1.0), s=(0.0, 0.0, 0.0))
    assert correction_weights(chain) == (3 * 15.0, 3 * 5.0, 3 * 1.0)


def test_k1_is_lmc_and_never_calls_the_drift():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2))
    Z = rng.standard_normal((1, 3, 2))

    def no_call(points, groups):
        raise AssertionError("K=1 must not evaluate the drift")

    out, info = pmm_step(no_call, x, -x, Z, [None], langevin_chain(0.1, 1))
    np.testing.assert_allclose(out, x + 0.1 * (-x) + np.sqrt(0.2) * Z[0])
    assert info.n_evals == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_size": 0.0, "K": 2}, "step_size"),
        ({"step_size": -1.0, "K": 2}, "step_size"),
        ({"step_size": float("nan"), "K": 2}, "step_size"),
        ({"step_size": float("inf"), "K": 2}, "step_size"),
        ({"step_size": 0.1, "K": 0}, "K"),
        ({"step_size": 0.1, "K": 2.5}, "K"),
    ],
)
def test_langevin_chain_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        langevin_chain(**kwargs)


def test_pmm_step_bad_input():
    x = np.zeros((1, 2))
    chain = langevin_chain(0.1, 3)
    with pytest.raises(ValueError, match="one entry per sub-step"):
        pmm_step(lambda p, g: -p, x, x, np.zeros((3, 1, 2)), [None, None], chain)
    with pytest.raises(ValueError, match="fired\\[0\\]"):
        pmm_step(lambda p, g: -p, x, x, np.zeros((3, 1, 2)), [np.array([0]), None, None], chain)
    with pytest.raises(ValueError, match="drift returned shape"):
        pmm_step(
            lambda p, g: p[:, :1],
            x,
            x,
            np.zeros((3, 1, 2)),
            [None, np.array([0]), None],
            chain,
        )
    with pytest.raises(ValueError, match="shape \\(K, B\\)"):
        fired_from_mask(np.zeros(3, dtype=bool))


def test_numpy_and_torch_give_the_same_update():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    K, B, d = 4, 5, 3
    chain = AffineChain(tuple(1 + 0.01 * rng.random(K)), (0.05,) * K, (0.3,) * K)
    x = rng.standard_normal((B, d))
    Z = rng.standard_normal((K, B, d))
    mask = rng.random((K, B)) < 0.6
    out_np, info_np = pmm_step(
        lambda p, g: np.cos(p), x, np.cos(x), Z, fired_from_mask(mask), chain
    )
    xt = torch.as_tensor(x)
    out_t, info_t = pmm_step(
        lambda p, g: torch.cos(p),
        xt,
        torch.cos(xt),
        torch.as_tensor(Z),
        fired_from_mask(mask, like=xt),
        chain,
    )
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-12, atol=1e-12)
    assert info_t.n_evals == info_np.n_evals
