"""Exact-score testbeds: the closed-form ε against autograd and an independent density."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from pmm_pymc.evaluation.digits import digits_data
from pmm_pymc.evaluation.testbeds import (
    ExactEpsModel,
    GaussianMixtureTestbed,
    fit_digits_mixture,
    get_testbed,
    list_testbeds,
)

T = 1000
# the linear DDPM schedule, written out here so the tests do not depend on
# pmm_pymc.diffusion.schedules
ALPHAS_CUMPROD = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)


def random_testbed(d: int = 5, K: int = 3, seed: int = 0) -> GaussianMixtureTestbed:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, d, d))
    covs = A @ A.transpose(0, 2, 1) / d + 0.05 * np.eye(d)
    return GaussianMixtureTestbed(rng.uniform(0.5, 2.0, K), rng.normal(size=(K, d)), covs)


def low_rank_testbed(d: int = 6, K: int = 3, r: int = 2, seed: int = 1) -> GaussianMixtureTestbed:
    rng = np.random.default_rng(seed)
    return GaussianMixtureTestbed.from_low_rank(
        rng.uniform(0.5, 2.0, K),
        rng.normal(size=(K, d)),
        rng.normal(size=(K, d, r)),
        rng.uniform(0.01, 0.1, K),
    )


def reference_log_prob_t(tb: GaussianMixtureTestbed, x: torch.Tensor, ab: float) -> torch.Tensor:
    """Independent implementation: torch.distributions with dense noised covariances."""
    cov = ab * tb.covariances + (1.0 - ab) * torch.eye(tb.dim, dtype=torch.float64)
    comp = MultivariateNormal(math.sqrt(ab) * tb.means, covariance_matrix=cov)
    return MixtureSameFamily(Categorical(probs=tb.weights), comp).log_prob(x)


TESTBEDS = {
    "random-full": random_testbed,
    "random-low-rank": low_rank_testbed,
    "mixture2d": lambda: get_testbed("mixture2d"),
    "digits64": lambda: get_testbed("digits64"),
    "aniso64": lambda: get_testbed("aniso64"),
}


@pytest.fixture(params=list(TESTBEDS), scope="module")
def testbed(request) -> GaussianMixtureTestbed:
    return TESTBEDS[request.param]()


@pytest.mark.parametrize("ab", [1.0, 0.9, 0.3, 1e-3])
def test_log_prob_t_matches_torch_distributions(testbed, ab):
    """The spectral-form density equals the dense one to float64 round-off."""
    g = torch.Generator().manual_seed(1)
    x = math.sqrt(ab) * testbed.sample(64, g, dtype=torch.float64)
    x = x + math.sqrt(1 - ab) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        testbed.log_prob_t(x, ab), reference_log_prob_t(testbed, x, ab), rtol=1e-9, atol=1e-8
    )


def test_eps_is_scaled_autograd_score(testbed):
    """ε(x, t) = -sqrt(1 - abar_t) grad log p_t(x), per-sample t, float64: exact up to round-off."""
    g = torch.Generator().manual_seed(2)
    B = 32
    t = torch.randint(0, T, (B,), generator=g)
    ab = ALPHAS_CUMPROD[t]
    x0 = testbed.sample(B, g, dtype=torch.float64)
    x = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(testbed.log_prob_t(xg, ab).sum(), xg)
    expected = -(1 - ab).sqrt()[:, None] * grad
    eps = testbed.eps(x, t, ALPHAS_CUMPROD)
    torch.testing.assert_close(eps, expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(testbed.score(x, ab), grad, rtol=1e-8, atol=1e-7)
    # the network-form callable agrees, and t as a per-sample index is respected
    model = testbed.eps_model(ALPHAS_CUMPROD)
    torch.testing.assert_close(model(x, t), eps)
    torch.testing.assert_close(model(x[:1], t[:1]), eps[:1])


def test_limits_in_time(testbed):
    """abar -> 1: p_t is the target; abar -> 0: p_t is N(0, I) so ε(x) -> x."""
    g = torch.Generator().manual_seed(3)
    x = testbed.sample(50, g, dtype=torch.float64)
    torch.testing.assert_close(testbed.log_prob_t(x, 1.0), testbed.log_prob(x))
    torch.testing.assert_close(testbed.log_prob(x), reference_log_prob_t(testbed, x, 1.0))
    # ε = sqrt(1 - abar) * (precision @ delta) -> 0 like sqrt(1 - abar) at abar -> 1
    eps_small = testbed.eps_from_alpha_bar(x, 1 - 1e-10)
    assert eps_small.abs().max() < 1e-5 * (testbed.score(x, 1.0).abs().max() + 1)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(testbed.eps_from_alpha_bar(z, 1e-12), z, rtol=0, atol=1e-5)


def test_float32_and_image_shapes():
    """float32 input keeps its dtype and (B, 1, 8, 8) shape, and agrees with float64."""
    tb = get_testbed("digits64")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 1, 8, 8, generator=g)
    t = torch.randint(0, T, (16,), generator=g)
    model = tb.eps_model(ALPHAS_CUMPROD)
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    ref = model(x.double().reshape(16, 64), t).reshape(x.shape)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    assert model.n_calls == 2 and model.n_evals == 32
    half = model(x.to(torch.bfloat16), t)
    assert half.dtype == torch.bfloat16


def test_schedule_object_is_accepted():
    class Schedule:
        alphas_cumprod = ALPHAS_CUMPROD.float()

    tb = get_testbed("mixture2d")
    model = tb.eps_model(Schedule())
    assert isinstance(model, ExactEpsModel)
    x = torch.zeros(3, 2)
    assert model(x, 5).shape == (3, 2)


@pytest.mark.parametrize("name", ["mixture2d", "digits64", "aniso64"])
def test_exact_samples_match_moments(name):
    """Sample mean and covariance of exact draws match the mixture's moments.

    Tolerance: 4.5 Monte-Carlo standard errors per entry, the MCSE estimated from
    the draws themselves (sd of x_i, and of the centred products x_i x_j, over
    sqrt(n)). With up to 2080 distinct covariance entries the chance that a
    correct sampler trips one is below 2080 * 7e-6 ≈ 1.4 %; the seed is fixed.
    """
    tb = get_testbed(name)
    n = 40_000
    x = tb.sample(n, torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x.shape == (n, tb.dim)
    mean = x.mean(0)
    se_mean = x.std(0) / math.sqrt(n)
    assert ((mean - tb.mean).abs() / se_mean).max() < 4.5
    xc = x - tb.mean
    # mean and variance of the products xc_i xc_j without forming the (n, d, d) tensor
    m1 = xc.T @ xc / n
    m2 = (xc * xc).T @ (xc * xc) / n
    se_cov = ((m2 - m1 * m1) / (n - 1)).sqrt()
    z = (m1 - tb.covariance).abs() / se_cov
    assert z.max() < 4.5
    assert torch.isfinite(tb.log_prob(x[:1000])).all()


def test_sample_device_dtype_and_reproducibility():
    tb = get_testbed("mixture2d")
    a = tb.sample(100, torch.Generator().manual_seed(7))
    b = tb.sample(100, torch.Generator().manual_seed(7))
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="n must be"):
        tb.sample(0)
    # counts go through pmm_pymc._validate: numpy integers count, booleans and floats do not
    for bad in (True, 3.0):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            tb.sample(bad)
    c = tb.sample(np.int64(100), torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_digits64_is_the_em_fixed_point():
    """At an EM fixed point the mixture mean is the data mean and the mixture
    covariance is the data covariance plus reg_covar * I (exact identities of the
    M-step); stored in float32, so atol 1e-5."""
    tb = get_testbed("digits64")
    x = digits_data().double()
    assert tb.dim == 64 and tb.n_components == 10
    torch.testing.assert_close(tb.mean, x.mean(0), rtol=0, atol=1e-5)
    cov = torch.cov(x.T, correction=0) + 1e-2 * torch.eye(64, dtype=torch.float64)
    torch.testing.assert_close(tb.covariance, cov, rtol=0, atol=1e-5)
    lam = tb.eigenvalues
    assert lam.min() > 0.0099 and lam.max() > 1.0  # anisotropic: floor 0.01, top ≈ 3
    assert x.min() == -1.0 and x.max() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": True}, "n_components must be an integer >= 1, got True"),
        ({"reg_covar": 0.0}, "reg_covar must be a finite number > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_fit_digits_mixture_bad_options(monkeypatch, kwargs, match):
    import sklearn.mixture

    def no_fit(*args, **kw):
        raise AssertionError("the fit started")

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", no_fit)
    with pytest.raises(ValueError, match=match):
        fit_digits_mixture(**kwargs)


def test_low_rank_and_rank_truncation():
    tb = low_rank_testbed()
    assert tb.rank == 2
    full = GaussianMixtureTestbed(tb.weights, tb.means, tb.covariances)
    x = full.sample(20, torch.Generator().manual_seed(8), dtype=torch.float64)
    for ab in (1.0, 0.5):
        torch.testing.assert_close(tb.log_prob_t(x, ab), full.log_prob_t(x, ab))
        torch.testing.assert_close(tb.eps_from_alpha_bar(x, ab), full.eps_from_alpha_bar(x, ab))
    # rank=d changes nothing; rank<d keeps the top directions and averages the rest
    same = GaussianMixtureTestbed(full.weights, full.means, full.covariances, rank=full.dim)
    torch.testing.assert_close(same.log_prob(x), full.log_prob(x))
    trunc = GaussianMixtureTestbed(full.weights, full.means, full.covariances, rank=2)
    torch.testing.assert_close(trunc.covariances, full.covariances, rtol=1e-8, atol=1e-10)
    rough = GaussianMixtureTestbed(full.weights, full.means, full.covariances, rank=1)
    assert not torch.allclose(rough.covariances, full.covariances)


def test_registry():
    assert {"mixture2d", "digits64", "aniso64"} <= set(list_testbeds())
    assert get_testbed("mixture2d").dim == 2
    lam = get_testbed("aniso64").eigenvalues
    torch.testing.assert_close(lam.min(), torch.tensor(0.01, dtype=torch.float64))
    torch.testing.assert_close(lam.max(), torch.tensor(0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown testbed 'nope'.*aniso64.*digits64.*mixture2d"):
        get_testbed("nope")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weights": [1.0, -1.0]}, ValueError, "weights must all be > 0"),
        ({"weights": [1.0]}, ValueError, r"weights must have shape \(2,\)"),
        ({"means": [0.0, 1.0]}, ValueError, r"means must have shape \(K, d\)"),
        ({"covariances": np.ones((2, 3))}, ValueError, "covariances must have shape"),
        ({"covariances": [[[1.0, 0.5], [0.0, 1.0]]] * 2}, ValueError, "symmetric"),
        ({"covariances": [[[1.0, 2.0], [2.0, 1.0]]] * 2}, ValueError, "positive definite"),
        ({"covariances": [1.0, float("nan")]}, ValueError, "covariances must be finite"),
        ({"rank": 3}, ValueError, "rank must be an integer in"),
        ({"rank": True}, ValueError, "rank must be an integer in"),
        ({"rank": 1.0}, ValueError, "rank must be an integer in"),
        ({"means": "ab"}, TypeError, "means must be array-like"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    args = {"weights": [1.0, 2.0], "means": [[0.0, 0.0], [1.0, 1.0]], "covariances": [1.0, 0.5]}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        GaussianMixtureTestbed(**args)


def test_bad_calls():
    tb = get_testbed("mixture2d")
    model = tb.eps_model(ALPHAS_CUMPROD)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="2 values per sample"):
        model(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="floating-point"):
        tb.log_prob(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model(np.zeros((4, 2)), 0)
    with pytest.raises(TypeError, match="integer timestep"):
        model(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        model(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices in \[0, 999\]"):
        model(x, torch.full((4,), T, dtype=torch.long))
    with pytest.raises(ValueError, match=r"alpha_bar must be a scalar or have shape \(4,\)"):
        tb.log_prob_t(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"alphas_cumprod must lie in \(0, 1\]"):
        tb.eps_model(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="alphas_cumprod must be a 1-D"):
        tb.eps_model(torch.ones(2, 2))
    with pytest.raises(ValueError, match="low-rank|factors must have shape"):
        GaussianMixtureTestbed.from_low_rank([1.0], [[0.0, 0.0]], np.ones((1, 3, 1)), 0.1)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        GaussianMixtureTestbed.from_low_rank([1.0], [[0.0, 0.0]], np.ones((1, 2, 1)), 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    tb = get_testbed("digits64")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(256, 64, generator=g)
    t = torch.randint(0, T, (256,), generator=g)
    model = tb.eps_model(ALPHAS_CUMPROD)
    out = model(x.cuda(), t.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), model(x, t), rtol=1e-4, atol=1e-4)
    xs = tb.sample(100, torch.Generator(device="cuda").manual_seed(0))
    assert xs.device.type == "cuda" and xs.shape == (100, 64)
