"""Metrics against known answers, independent implementations, and their invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import torch

from pmm_pymc.evaluation.metrics import (
    energy_distance,
    frechet_distance,
    log_density_gap,
    median_bandwidth,
    mmd_rbf,
    random_directions,
    sliced_wasserstein,
)
from pmm_pymc.evaluation.testbeds import get_testbed


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64) + shift


# ------------------------------------------------------------- brute force
def brute_mmd(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """The unbiased MMD² by explicit double loops (independent of the Gram trick)."""

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    dxy = np.linalg.norm(x[:, None] - y[None], axis=-1).mean()
    dxx = np.linalg.norm(x[:, None] - x[None], axis=-1).sum() / (len(x) * (len(x) - 1))
    dyy = np.linalg.norm(y[:, None] - y[None], axis=-1).sum() / (len(y) * (len(y) - 1))
    return 2 * dxy - dxx - dyy


def test_mmd_and_energy_match_brute_force_with_chunking():
    """Chunked Gram-trick sums equal explicit pairwise loops (chunks of 7 and 50 entries
    give one- and two-row chunks, so diagonal blocks are cut across chunk boundaries)."""
    x, y = normal(23, 3, 0), normal(17, 3, 1, 0.4)
    h = 0.8
    for chunk in (7, 50, 1 << 24):
        got = mmd_rbf(x, y, h, chunk_elements=chunk)
        assert got.item() == pytest.approx(brute_mmd(x.numpy(), y.numpy(), h), rel=1e-10)
        got = energy_distance(x, y, chunk_elements=chunk)
        assert got.item() == pytest.approx(brute_energy(x.numpy(), y.numpy()), rel=1e-10)
    pooled = torch.cat([x, y])
    med = np.median(scipy.spatial.distance.pdist(pooled.numpy()))
    assert median_bandwidth(x, y).item() == pytest.approx(med, rel=1e-12)
    assert mmd_rbf(x, y).item() == pytest.approx(brute_mmd(x.numpy(), y.numpy(), med), rel=1e-10)


@pytest.mark.parametrize("metric", ["mmd", "mmd-fine", "energy"])
def test_unbiased_under_null_and_positive_under_shift(metric):
    """Both statistics are unbiased U-statistics, so over R = 20 independent pairs of
    samples from one distribution their mean is 0 within 4 standard errors of the
    mean (SE from the spread of the 20 values); a 0.5 shift of the mean gives a
    mean more than 5 SE above zero (the fine-bandwidth kernel has the least power
    against a mean shift; at 0.5 it still clears 5 SE)."""
    fn = {
        "mmd": lambda a, b: mmd_rbf(a, b),
        "mmd-fine": lambda a, b: mmd_rbf(a, b, scale=0.2),
        "energy": energy_distance,
    }[metric]
    R, n, d = 20, 150, 4
    null = torch.stack([fn(normal(n, d, 2 * r), normal(n, d, 2 * r + 1)) for r in range(R)])
    alt = torch.stack([fn(normal(n, d, 2 * r), normal(n, d, 2 * r + 1, 0.5)) for r in range(R)])
    se0 = null.std() / math.sqrt(R)
    assert abs(null.mean()) < 4 * se0
    assert alt.mean() > 5 * alt.std() / math.sqrt(R)


def test_energy_distance_closed_form_1d():
    """N(0,1) vs N(mu,1): E = 2 E|X-Y| - 2 E|X-X'| with X-Y ~ N(mu, 2) and
    E|X-X'| = 2/sqrt(pi). Mean of 10 replicates within 4 SE of the truth."""
    mu, s = 0.7, math.sqrt(2.0)
    phi = 0.5 * (1 + math.erf(-mu / s / math.sqrt(2)))
    e_abs = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * phi)
    truth = 2 * e_abs - 2 * (2 / math.sqrt(math.pi))
    vals = torch.stack(
        [energy_distance(normal(800, 1, r), normal(800, 1, 100 + r, mu)) for r in range(10)]
    )
    assert abs(vals.mean().item() - truth) < 4 * vals.std().item() / math.sqrt(10)


def test_invariances():
    """MMD at the median bandwidth: invariant to x -> c x + b applied to both samples;
    at a fixed bandwidth the bandwidth scales with c. Energy scales like |c|; sliced W
    like |c| (same directions); all translation invariant. Exact up to round-off."""
    x, y = normal(60, 3, 3), normal(50, 3, 4, 0.5)
    b = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    c = 2.5
    torch.testing.assert_close(mmd_rbf(c * x + b, c * y + b), mmd_rbf(x, y))
    torch.testing.assert_close(mmd_rbf(c * x, c * y, c * 0.7), mmd_rbf(x, y, 0.7))
    torch.testing.assert_close(mmd_rbf(x, y, 0.7, scale=0.5), mmd_rbf(x, y, 0.35))
    torch.testing.assert_close(energy_distance(c * x + b, c * y + b), c * energy_distance(x, y))
    sw = sliced_wasserstein(x, y, 50, gen(0))
    torch.testing.assert_close(sliced_wasserstein(-c * x + b, -c * y + b, 50, gen(0)), c * sw)
    torch.testing.assert_close(frechet_distance(x + b, y + b), frechet_distance(x, y))
    torch.testing.assert_close(frechet_distance(c * x, c * y), c**2 * frechet_distance(x, y))


def test_sliced_wasserstein_of_gaussians_matches_closed_form():
    """For x ~ N(m1, S1), y ~ N(m2, S2) each projection is Gaussian and
    W2²(theta) = (theta·(m1 - m2))² + (sqrt(theta'S1 theta) - sqrt(theta'S2 theta))².
    With the same directions (same generator), n = 20000 per side: the empirical W2²
    fluctuates by about 2 |shift| sd / sqrt(n) ≈ 1 % of the value here and is biased
    up by O(log n / n); tolerance 4 % relative."""
    d, L = 3, 64
    A = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 0.8]], dtype=torch.float64)
    m1 = torch.zeros(d, dtype=torch.float64)
    m2 = torch.tensor([0.8, -0.4, 0.3], dtype=torch.float64)
    S1, S2 = A @ A.T, 0.5 * torch.eye(d, dtype=torch.float64)
    n = 20_000
    x = normal(n, d, 5) @ A.T + m1
    y = normal(n, d, 6) * math.sqrt(0.5) + m2
    theta = random_directions(L, d, gen(11), dtype=torch.float64)
    w2 = (theta @ (m1 - m2)) ** 2 + (
        torch.einsum("ld,de,le->l", theta, S1, theta).sqrt()
        - torch.einsum("ld,de,le->l", theta, S2, theta).sqrt()
    ) ** 2
    truth = w2.mean().sqrt()
    got = sliced_wasserstein(x, y, L, gen(11))
    assert got.item() == pytest.approx(truth.item(), rel=0.04)
    # p = 1 is smaller than p = 2 (Jensen), both positive
    assert 0 < sliced_wasserstein(x, y, L, gen(11), p=1) < got


def test_sliced_wasserstein_unequal_sizes_is_exact():
    """Duplicating y leaves its empirical measure unchanged, so the unequal-size path
    must give the equal-size value; and a different split agrees with a brute-force
    quantile integral on a fine grid."""
    x, y = normal(40, 2, 7), normal(40, 2, 8, 1.0)
    a = sliced_wasserstein(x, y, 16, gen(3))
    torch.testing.assert_close(sliced_wasserstein(x, torch.cat([y, y]), 16, gen(3)), a)
    torch.testing.assert_close(sliced_wasserstein(x, torch.cat([y, y, y]), 16, gen(3)), a)
    y2 = normal(30, 2, 9, 1.0)
    theta = random_directions(16, 2, gen(3), dtype=torch.float64)
    u = (torch.arange(120_000, dtype=torch.float64) + 0.5) / 120_000  # lcm(40, 30) divides it
    qx = torch.sort(x @ theta.T, 0).values[(u * 40).long()]
    qy = torch.sort(y2 @ theta.T, 0).values[(u * 30).long()]
    ref = ((qx - qy) ** 2).mean().sqrt()
    torch.testing.assert_close(sliced_wasserstein(x, y2, 16, gen(3)), ref)


def test_frechet_distance_matches_scipy_and_closed_form():
    """Against scipy's sqrtm on the same sample moments (an independent route), and
    zero for identical feature sets."""
    rng = np.random.default_rng(0)
    fx = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    fy = rng.normal(size=(250, 5)) @ rng.normal(size=(5, 5)) + 0.3
    mx, my = fx.mean(0), fy.mean(0)
    cx, cy = np.cov(fx.T), np.cov(fy.T)
    covmean = scipy.linalg.sqrtm(cx @ cy).real
    ref = ((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * covmean)
    got = frechet_distance(torch.tensor(fx), torch.tensor(fy))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(torch.tensor(fx), torch.tensor(fx)).item() == pytest.approx(0, abs=1e-9)
    # float32 inputs are promoted to float64 internally
    got32 = frechet_distance(torch.tensor(fx).float(), torch.tensor(fy).float())
    assert got32.item() == pytest.approx(ref, rel=1e-5)


def whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """Samples with sample mean exactly 0 and unbiased sample covariance exactly I."""
    z = normal(n, d, seed)
    z = z - z.mean(0)
    return z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T


@pytest.mark.parametrize("case", ["diagonal", "proportional"])
def test_frechet_equals_gaussian_closed_form(case):
    """Feature sets whose sample moments are exactly (m1, S1) and (m2, S2): the result is
    the population W2² between Gaussians, to round-off. Closed forms that avoid matrix
    square roots: commuting diagonal S, FD = |dm|² + sum (sqrt a - sqrt b)²; and
    S2 = c² S1, FD = |dm|² + (1 - c)² tr S1."""
    d = 3
    dm = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    if case == "diagonal":
        a = torch.tensor([1.0, 0.25, 2.0], dtype=torch.float64)
        b = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
        x = whitened(100, d, 10) * a.sqrt()
        y = whitened(80, d, 11) * b.sqrt() + dm
        truth = (dm**2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    else:
        A = torch.tensor([[1.0, 0.3, 0.0], [0.2, 0.5, 0.2], [0.0, -0.4, 0.8]], dtype=torch.float64)
        c = 1.7
        x = whitened(100, d, 12) @ A.T
        y = c * whitened(80, d, 13) @ A.T + dm
        truth = (dm**2).sum() + (1 - c) ** 2 * torch.trace(A @ A.T)
    torch.testing.assert_close(frechet_distance(x, y), truth, rtol=1e-9, atol=1e-12)


def test_log_density_gap_signs():
    """Exact vs exact: 0 within 4 SE (SE = sd(log p) sqrt(1/n + 1/m)). Over-dispersed
    samples (exact + N(0, 0.03²) noise, comparable to the 0.03 radial sd of the thin
    arcs) have a gap below -10 SE; samples pulled halfway to their component means
    (under-dispersed) a gap above +10 SE."""
    tb = get_testbed("mixture2d")
    n = 20_000
    exact = tb.sample(n, gen(0), dtype=torch.float64)
    other = tb.sample(n, gen(1), dtype=torch.float64)
    se = tb.log_prob(exact).std() * math.sqrt(2 / n)
    assert abs(log_density_gap(tb, other, exact)) < 4 * se
    wide = other + 0.03 * torch.randn(other.shape, generator=gen(2), dtype=torch.float64)
    assert log_density_gap(tb, wide, exact) < -10 * se
    nearest = tb.means[torch.cdist(other, tb.means).argmin(1)]
    narrow = 0.5 * (other + nearest)
    assert log_density_gap(tb, narrow, exact) > 10 * se


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, y: mmd_rbf(x, y[:, :2]), ValueError, "same number of values per sample"),
        (lambda x, y: mmd_rbf(x[:1], y), ValueError, "x needs at least 2 samples, got 1"),
        (lambda x, y: energy_distance(x, y[:1]), ValueError, "y needs at least 2 samples"),
        (lambda x, y: sliced_wasserstein(x[0], y), ValueError, r"x must have shape \(n, d\)"),
        (lambda x, y: frechet_distance(x.numpy(), y), TypeError, "x must be a torch.Tensor"),
        (lambda x, y: mmd_rbf(x.long(), y), TypeError, "floating-point"),
        (lambda x, y: mmd_rbf(x * float("nan"), y), ValueError, "x contains NaN or inf"),
        (lambda x, y: mmd_rbf(x, y, "mean"), ValueError, "bandwidth must be 'median'"),
        (lambda x, y: mmd_rbf(x, y, -1.0), ValueError, "bandwidth must be 'median'"),
        (lambda x, y: mmd_rbf(x, y, scale=0), ValueError, "scale must be a finite number > 0"),
        (lambda x, y: mmd_rbf(x, y, chunk_elements=0), ValueError, "chunk_elements must be"),
        (lambda x, y: sliced_wasserstein(x, y, 0), ValueError, "n_projections must be"),
        (
            lambda x, y: sliced_wasserstein(x, y, p=0.5),
            ValueError,
            "p must be a finite number >= 1",
        ),
        (lambda x, y: log_density_gap(object(), x, y), TypeError, "log_prob"),
        (lambda x, y: median_bandwidth(torch.zeros(5, 2)), ValueError, "all samples coincide"),
        (lambda x, y: median_bandwidth(x, max_points=1), ValueError, "max_points must be"),
        # booleans and non-integral floats are not counts; booleans are not numbers
        (lambda x, y: median_bandwidth(x, max_points=2.5), ValueError, "max_points must be"),
        (lambda x, y: mmd_rbf(x, y, chunk_elements=True), ValueError, "chunk_elements must"),
        (lambda x, y: mmd_rbf(x, y, chunk_elements=64.0), ValueError, "chunk_elements must"),
        (lambda x, y: mmd_rbf(x, y, True), ValueError, "bandwidth must be 'median' or a"),
        (lambda x, y: mmd_rbf(x, y, scale=True), ValueError, "scale must be a finite number"),
        (lambda x, y: sliced_wasserstein(x, y, True), ValueError, "n_projections must be"),
        (lambda x, y: sliced_wasserstein(x, y, 2.0), ValueError, "n_projections must be"),
        (lambda x, y: sliced_wasserstein(x, y, p=True), ValueError, "p must be a finite"),
        (lambda x, y: random_directions(True, 3), ValueError, "n_projections must be"),
    ],
)
def test_bad_input(call, error, match):
    x, y = normal(10, 3, 0), normal(12, 3, 1)
    with pytest.raises(error, match=match):
        call(x, y)


def test_image_shaped_and_half_inputs():
    """(n, 1, 8, 8) inputs are flattened; bfloat16 is computed in float32."""
    x = torch.randn(30, 1, 8, 8, generator=gen(0))
    y = torch.randn(30, 64, generator=gen(1))
    a = mmd_rbf(x, y)
    torch.testing.assert_close(a, mmd_rbf(x.reshape(30, 64), y))
    assert mmd_rbf(x.bfloat16(), y.bfloat16()).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, y = normal(500, 8, 0), normal(400, 8, 1, 0.2)
    xc, yc = x.cuda(), y.cuda()
    torch.testing.assert_close(mmd_rbf(xc, yc).cpu(), mmd_rbf(x, y))
    torch.testing.assert_close(energy_distance(xc, yc).cpu(), energy_distance(x, y))
    torch.testing.assert_close(
        sliced_wasserstein(xc, yc, 32, gen(0)).cpu(), sliced_wasserstein(x, y, 32, gen(0))
    )
    torch.testing.assert_close(frechet_distance(xc, yc).cpu(), frechet_distance(x, y))
    with pytest.raises(ValueError, match="same device"):
        mmd_rbf(xc, y)


def test_numpy_scalars_are_accepted_as_options():
    """Options go through pmm_pymc._validate: numpy scalars are numbers (np.float32 too)."""
    x, y = normal(10, 3, 0), normal(12, 3, 1)
    torch.testing.assert_close(
        mmd_rbf(x, y, np.float32(1.5), scale=np.float32(0.5), chunk_elements=np.int64(64)),
        mmd_rbf(x, y, 1.5, scale=0.5, chunk_elements=64),
    )
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    torch.testing.assert_close(
        sliced_wasserstein(x, y, np.int64(8), gen[0], p=np.float32(2.0)),
        sliced_wasserstein(x, y, 8, gen[1], p=2.0),
    )
    torch.testing.assert_close(
        median_bandwidth(x, max_points=np.int64(6)), median_bandwidth(x, max_points=6)
    )
