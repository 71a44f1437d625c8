"""sample_langevin: PMM and LMC for torch log-densities, through the core update."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pmm_pymc.diffusion.langevin_torch import sample_langevin


def std_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).flatten(1).sum(1)


def pmm_stationary_variance(eta: float, K: int) -> float:
    """Exact stationary variance of PMM(eta, K) on N(0, 1): a sum over the firing patterns.

    The block maps x to A x + B with A = 1 - eta + eta^2 sum_{fired i} i/K and
    E[B^2 | fired] = (2 eta/K) sum_j (1 - eta #{fired i > j})^2 (see
    tests/test_core.py for the derivation); V = E[B^2] / (1 - E[A^2]).
    """
    EA2 = EB2 = 0.0
    for pattern in itertools.product((0, 1), repeat=K - 1):
        fired = [i + 1 for i, h in enumerate(pattern) if h]
        prob = math.prod(1 / K if h else 1 - 1 / K for h in pattern)
        A = 1 - eta + eta**2 * sum(i / K for i in fired)
        EA2 += prob * A * A
        EB2 += (
            prob * (2 * eta / K) * sum((1 - eta * sum(i > j for i in fired)) ** 2 for j in range(K))
        )
    return EB2 / (1 - EA2)


@pytest.mark.parametrize(("method", "K"), [("lmc", 1), ("pmm", 8)])
def test_stationary_variance_on_a_standard_normal(method, K):
    """Chain-averaged second moment vs the exact stationary variance.

    LMC: 1 / (1 - eta/2) = 1.111 at eta = 0.2; PMM(K=8): 1.0277 (exact sum).
    Tolerance: 4 standard errors of the mean over independent chains (each
    chain's time average carries its own autocorrelation). The start N(0, 1)
    is 60 steps away: its influence decays like (1 - eta)^120 < 1e-11.
    """
    eta, B, burn, keep = 0.2, 2000, 60, 200
    exact = 1 / (1 - eta / 2) if method == "lmc" else pmm_stationary_variance(eta, K)
    g = torch.Generator().manual_seed(10 + K)
    x0 = torch.randn(B, 1, generator=g, dtype=torch.float64)
    out = sample_langevin(
        std_normal_log_prob, x0, step_size=eta, n_steps=burn + keep, method=method, K=K, generator=g
    )
    m2 = (out.samples[burn:, :, 0] ** 2).mean(0)
    se = m2.std() / math.sqrt(B)
    assert abs(m2.mean().item() - exact) < 4 * se.item(), (m2.mean().item(), exact, se.item())
    if method == "pmm":  # and it is measurably closer to 1 than LMC at the same step
        assert abs(m2.mean().item() - 1 / (1 - eta / 2)) > 10 * se.item()


def test_score_and_log_prob_give_the_same_chain():
    x0 = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample_langevin(
        std_normal_log_prob,
        x0,
        step_size=0.3,
        n_steps=20,
        K=5,
        generator=torch.Generator().manual_seed(1),
    )
    b = sample_langevin(
        None,
        x0,
        score=lambda x: -x,
        step_size=0.3,
        n_steps=20,
        K=5,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-14, atol=1e-14)
    assert a.samples.shape == (20, 6, 2, 3)
    assert torch.equal(a.x, a.samples[-1])
    assert torch.equal(a.nfe, b.nfe)


def test_nfe_matches_the_formula():
    """Per chain, NFE = n + Binomial(n (K-1), 1/K); tolerance 4 standard errors of the mean."""
    n, K, B = 50, 10, 1000
    calls = []

    def score(x):
        calls.append(x.shape[0])
        return -x

    out = sample_langevin(
        None,
        torch.zeros(B, 1),
        score=score,
        step_size=0.1,
        n_steps=n,
        K=K,
        generator=torch.Generator().manual_seed(0),
    )
    se = math.sqrt(n * (K - 1) * (1 / K) * (1 - 1 / K) / B)
    assert abs(out.nfe.double().mean().item() - n * (2 - 1 / K)) < 4 * se
    assert sum(calls) == int(out.nfe.sum())
    assert out.nfe.dtype == torch.int64 and out.nfe.shape == (B,)


def test_chain_does_not_depend_on_the_batch():
    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    big = sample_langevin(
        std_normal_log_prob, x0, step_size=0.2, n_steps=15, K=4, generator=gens(range(4)), chunk=4
    )
    small = sample_langevin(
        std_normal_log_prob, x0[[2]], step_size=0.2, n_steps=15, K=4, generator=gens([2]), chunk=4
    )
    torch.testing.assert_close(small.samples[:, 0], big.samples[:, 2], rtol=0, atol=0)


def test_thin_callback_and_k1_pmm_is_lmc():
    x0 = torch.zeros(3, 2)
    seen = []
    out = sample_langevin(
        std_normal_log_prob,
        x0,
        step_size=0.1,
        n_steps=10,
        thin=3,
        callback=lambda i, x: seen.append(i),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.samples.shape == (3, 3, 2) and seen == list(range(10))
    a = sample_langevin(
        std_normal_log_prob,
        x0,
        step_size=0.1,
        n_steps=5,
        method="pmm",
        K=1,
        generator=torch.Generator().manual_seed(0),
    )
    b = sample_langevin(
        std_normal_log_prob,
        x0,
        step_size=0.1,
        n_steps=5,
        method="lmc",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    assert a.nfe.tolist() == [5, 5, 5]


def test_autograd_only_for_the_gradient():
    """log_prob is differentiated with autograd; everything else runs under no_grad.

    The energy has a parameter that requires grad: no graph may reach the states.
    """
    w = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    grad_mode = []

    def log_prob(x):
        grad_mode.append(torch.is_grad_enabled())
        return -0.5 * w * (x**2).sum(1)

    out = sample_langevin(
        log_prob,
        torch.ones(3, 2, dtype=torch.float64),
        step_size=0.1,
        n_steps=4,
        K=3,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, x: grad_mode.append(torch.is_grad_enabled()),
    )
    n_cb = 4  # one callback per step; the rest are gradient calls
    assert grad_mode.count(False) == n_cb and grad_mode.count(True) == len(grad_mode) - n_cb
    assert not out.samples.requires_grad and not out.x.requires_grad and w.grad is None


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"log_prob": None}, ValueError, "exactly one of log_prob and score"),
        ({"score": lambda x: -x}, ValueError, "exactly one of log_prob and score"),
        ({"log_prob": 3}, TypeError, "log_prob must be callable"),
        ({"method": "mala"}, ValueError, "unknown method 'mala'"),
        ({"step_size": 0.0}, ValueError, "step_size"),
        ({"step_size": float("inf")}, ValueError, "step_size"),
        ({"n_steps": 0}, ValueError, "n_steps"),
        ({"K": 0}, ValueError, "K must be"),
        ({"thin": 0}, ValueError, "thin"),
        ({"x0": torch.zeros(3, 2, dtype=torch.long)}, TypeError, "floating"),
        ({"log_prob": lambda x: x.sum()}, ValueError, "one value per chain"),
        ({"generator": [torch.Generator()]}, ValueError, "one per member"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {
        "log_prob": std_normal_log_prob,
        "x0": torch.zeros(3, 2),
        "step_size": 0.1,
        "n_steps": 3,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sample_langevin(**args)


def _nan_beyond_8(x: torch.Tensor) -> torch.Tensor:
    """N(0, I), except that the log-density's gradient is NaN where x[0] > 8."""
    scale = torch.where(x[:, 0] > 8, torch.nan, 1.0).detach()
    return -0.5 * scale * (x**2).sum(1)


def _stiff_beyond_8(x: torch.Tensor) -> torch.Tensor:
    """N(0, I) inside |x| <= 8, curvature 400 outside: a step of 0.1 runs away there."""
    curvature = torch.where(x.abs() > 8, 400.0, 1.0).detach()
    return -0.5 * (curvature * x**2).sum(1)


@pytest.mark.parametrize(
    ("log_prob", "cause", "method"),
    [(_nan_beyond_8, "the log-density", "pmm"), (_stiff_beyond_8, "the step", "lmc")],
)
def test_one_bad_chain_of_16_costs_nothing_to_the_others(log_prob, cause, method):
    """Chain 5 starts where the target misbehaves; it is frozen and flagged, the 15 others
    are bit-identical to a run without it (one generator per chain), and the warning names
    what produced the NaN or inf. Raised FloatingPointError and lost every chain before."""
    B, bad, n = 16, 5, 60
    x0 = torch.randn(B, 2, generator=torch.Generator().manual_seed(0))
    x0[bad] = 9.0
    good = [c for c in range(B) if c != bad]

    def run(rows):
        gens = [torch.Generator().manual_seed(100 + c) for c in rows]
        return sample_langevin(
            log_prob, x0[rows], step_size=0.1, n_steps=n, method=method, K=4, generator=gens
        )

    with pytest.warns(RuntimeWarning, match=rf"1 of 16 chain\(s\).*came from {cause}.*\[5\]"):
        out = run(list(range(B)))
    alone = run(good)
    torch.testing.assert_close(out.samples[:, good], alone.samples, rtol=0, atol=0)
    assert torch.isfinite(out.samples).all()
    assert out.diverging.sum(0).tolist() == [int(c == bad) for c in range(B)]
    assert not alone.diverging.any()
    # Frozen at its last finite state: constant from the divergence on.
    at = int(out.diverging[:, bad].nonzero()[0, 0])
    frozen = out.samples[at:, bad]
    assert (frozen == frozen[0]).all()
    if cause == "the log-density":  # NaN gradient at the start: it never moved
        assert at == 0 and torch.equal(frozen[0], x0[bad])
    dt = out.to_datatree()
    assert int(dt["sample_stats"]["diverging"].sum()) == 1
    assert bool(dt["sample_stats"]["diverging"].isel(chain=bad, draw=at))


@pytest.mark.parametrize(("thin", "K"), [(1, 1), (3, 4)])
def test_to_datatree_round_trips_shapes_dims_and_stats(thin, K):
    """Posterior (chain, draw, *event) with the user's dim names and coords; sample_stats
    n_steps (gradient evaluations per draw: their total is nfe, minus the steps after the
    last kept draw), diverging, step_size; numpy whatever the tensors were."""
    import arviz_stats as azs

    B, n = 4, 31
    out = sample_langevin(
        std_normal_log_prob,
        torch.zeros(B, 2, 3),
        step_size=0.3,
        n_steps=n,
        method="pmm" if K > 1 else "lmc",
        K=K,
        thin=thin,
        generator=torch.Generator().manual_seed(3),
    )
    dt = out.to_datatree("theta", dims=["row", "col"], coords={"col": ["a", "b", "c"]})
    post, stats = dt["posterior"], dt["sample_stats"]
    n_kept = n // thin
    assert post["theta"].dims == ("chain", "draw", "row", "col")
    assert post["theta"].shape == (B, n_kept, 2, 3)
    assert list(post["col"].values) == ["a", "b", "c"]
    assert isinstance(post["theta"].values, np.ndarray)
    np.testing.assert_array_equal(post["theta"].values, out.samples.numpy().transpose(1, 0, 2, 3))
    assert set(stats.data_vars) == {"n_steps", "diverging", "step_size"}
    assert stats["n_steps"].dims == ("chain", "draw") and stats["n_steps"].shape == (B, n_kept)
    assert stats["diverging"].dtype == bool and not stats["diverging"].any()
    assert np.all(stats["step_size"].values == 0.3)
    # every draw costs thin steps of 1 gradient + fired midpoints (at most K - 1 each)
    per_draw = stats["n_steps"].values
    assert per_draw.min() >= thin and per_draw.max() <= thin * K
    tail = n - n_kept * thin  # steps after the last kept draw
    assert np.all(per_draw.sum(axis=1) <= out.nfe.numpy())
    assert np.all(per_draw.sum(axis=1) >= out.nfe.numpy() - tail * K)
    if K == 1:
        assert np.all(per_draw == thin)
    assert post.attrs["method"] == ("pmm" if K > 1 else "lmc") and post.attrs["K"] == K
    # ArviZ's ESS on the DataTree equals ArviZ's ESS on the same numpy array
    arr = out.samples.numpy().transpose(1, 0, 2, 3)
    on_tree = azs.ess(dt, var_names=["theta"])["theta"].values
    on_array = azs.ess(arr, chain_axis=0, draw_axis=1)
    np.testing.assert_array_equal(on_tree, on_array)
    summary = azs.summary(dt)
    assert len(summary) == 6 and "ess_bulk" in summary.columns
    default = out.to_datatree()
    assert default["posterior"]["x"].dims == ("chain", "draw", "x_dim_0", "x_dim_1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": ["only_one"]}, "name the 2 event dim"),
        ({"dims": ["chain", "b"]}, "sample dim names"),
        ({"var_name": ""}, "var_name"),
    ],
)
def test_to_datatree_bad_input(kwargs, match):
    out = sample_langevin(std_normal_log_prob, torch.zeros(2, 2, 2), step_size=0.1, n_steps=2)
    with pytest.raises(ValueError, match=match):
        out.to_datatree(**kwargs)


def test_non_finite_start_is_refused():
    x0 = torch.zeros(3, 2)
    x0[1, 0] = torch.nan
    with pytest.raises(ValueError, match=r"x0 must be finite; chains \[1\]"):
        sample_langevin(std_normal_log_prob, x0, step_size=0.1, n_steps=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_chain_matches_cpu_with_cpu_generators():
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    cpu = sample_langevin(
        std_normal_log_prob,
        x0,
        step_size=0.2,
        n_steps=10,
        K=4,
        generator=[torch.Generator().manual_seed(s) for s in range(4)],
    )
    gpu = sample_langevin(
        std_normal_log_prob,
        x0.cuda(),
        step_size=0.2,
        n_steps=10,
        K=4,
        generator=[torch.Generator().manual_seed(s) for s in range(4)],
    )
    assert gpu.samples.is_cuda
    np.testing.assert_allclose(gpu.samples.cpu().numpy(), cpu.samples.numpy(), rtol=1e-4, atol=1e-5)
