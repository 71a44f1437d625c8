"""PMM's diffusion sampler at 10-30 network evaluations: no divergence, the data-prediction
scheme against a plain loop, the stability guard, and the non-finite checks of issue 12."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_diffusion import plain_pmm_loop, toy_eps

from pmm_pymc.diffusion.sampler import sample
from pmm_pymc.diffusion.schedules import DDPMSchedule
from pmm_pymc.evaluation import metrics
from pmm_pymc.evaluation.testbeds import get_testbed

# the guard-off runs are deliberately stiff; the warning itself is tested in test_diffusion.py
pytestmark = pytest.mark.filterwarnings("ignore:PMM blocks reach stiffness:RuntimeWarning")


def test_x0_pmm_matches_a_plain_loop_of_the_sde_dpm_solver_formula():
    """PMM over the data-prediction chain, written from first-order SDE-DPM-Solver++:
    ``x_s = (sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) x0(x, t) + sigma_s
    sqrt(1 - e^{-2h}) z`` with ``h = lambda_s - lambda_t``, the drift ``x0 = (x - sigma_t
    eps) / alpha_t`` frozen through each block and corrected at the fired midpoints by
    ``(prod_{r>i} a_r) g_i K (x0_i - x0_0)`` (the plain loop of test_diffusion.py).
    Exact up to float64 rounding (1e-10).
    """
    T, K, B, d = 20, 4, 6, 2
    sch = DDPMSchedule.linear(T, beta_start=1e-2, beta_end=0.3)
    model = toy_eps(T)
    x_T = torch.randn(B, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(
        model,
        x_T,
        sch,
        "pmm",
        K=K,
        parameterization="x0",
        variance="beta_tilde",
        max_gain=None,
        noise_by="substep",
        generator=torch.Generator().manual_seed(5),
    )
    abar = [float(a) for a in sch.alphas_cumprod]

    def alpha_sigma(t):
        ab = abar[t] if t >= 0 else 1.0  # t = -1: the clean end
        return math.sqrt(ab), math.sqrt(1.0 - ab)

    def coef(t):  # the step t -> t - 1
        (a_t, s_t), (a_s, s_s) = alpha_sigma(t), alpha_sigma(t - 1)
        e2h = (a_t * s_s / (s_t * a_s)) ** 2  # e^{-2h}
        return (s_s / s_t) * math.sqrt(e2h), a_s * (1.0 - e2h), s_s * math.sqrt(1.0 - e2h)

    def x0_model(x, t):
        a_t, s_t = alpha_sigma(t)
        return (x - s_t * model(x, torch.full((x.shape[0],), t, dtype=torch.long))) / a_t

    x, _ = plain_pmm_loop(x0_model, coef, x_T, T, K, seed=5)
    torch.testing.assert_close(out.samples, x, rtol=1e-10, atol=1e-10)


def test_x0_chain_with_blocks_of_one_is_the_ddpm_chain():
    """The parameterisation changes what PMM freezes, not the fine chain: with K = 1 the
    x0 form is DDPM (posterior variance) up to float64 rounding (1e-10)."""
    sch = DDPMSchedule.linear(50, beta_start=1e-3, beta_end=0.3)
    kw = {"generator": torch.Generator().manual_seed(1)}
    a = sample(
        toy_eps(50), (5, 3), sch, "pmm", K=1, parameterization="x0", variance="beta_tilde", **kw
    )
    kw = {"generator": torch.Generator().manual_seed(1)}
    b = sample(toy_eps(50), (5, 3), sch, "ddpm", steps=50, **kw)
    torch.testing.assert_close(a.samples.double(), b.samples.double(), rtol=1e-5, atol=1e-5)


def _scores(testbed, x, ref, h):
    assert torch.isfinite(x).all()
    return (
        float(metrics.mmd_rbf(x, ref, h)),
        float(metrics.mmd_rbf(x, ref, h, scale=0.2)),
        abs(float(metrics.log_density_gap(testbed, x, ref))),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits64", "aniso64"])
def test_default_pmm_never_diverges_and_is_no_worse_than_ddpm(name):
    """The default layout at NFE 10, 15, 20, 30 (the stiff bundled testbeds, exact eps):
    finite samples and, metric by metric, no worse than DDPM at the same NFE.

    Tolerances (n = 400, one seed): MMD² differences up to 1e-3 (about three seed-to-seed
    sds of MMD² at n = 500 in docs/results-diffusion.md) and the absolute log-density gap up
    to 1.5 nats above DDPM's (about two seed sds). The default below 40 NFE (data
    prediction, variance beta, 1.25 nfe steps) was chosen on these two testbeds; the
    check on mixture2d is in docs/results-diffusion.md.
    """
    testbed = get_testbed(name)
    sch = DDPMSchedule.linear(1000)
    model = testbed.eps_model(sch)
    n = 400
    ref = testbed.sample(n, torch.Generator().manual_seed(99))
    h = metrics.median_bandwidth(ref)
    for nfe in (10, 15, 20, 30):
        gen = torch.Generator().manual_seed(0)
        pmm = sample(model, (n, testbed.dim), sch, "pmm", nfe=nfe, generator=gen)
        gen = torch.Generator().manual_seed(0)
        ddpm = sample(model, (n, testbed.dim), sch, "ddpm", steps=nfe, generator=gen)
        assert float(pmm.nfe.double().mean()) <= nfe + 0.5
        p, q = _scores(testbed, pmm.samples, ref, h), _scores(testbed, ddpm.samples, ref, h)
        assert p[0] <= q[0] + 1e-3, (nfe, p, q)
        assert p[1] <= q[1] + 1e-3, (nfe, p, q)
        assert p[2] <= q[2] + 1.5, (nfe, p, q)


def test_guard_catches_the_stiff_eps_blocks_and_counts_them():
    """digits64 at 20 NFE with the published noise-prediction scheme: without the guard
    the clean-end blocks blow up (log-density gap of order -1e3 in docs/results-diffusion.md);
    with it the corrections that amplify are refused, counted per sample, and the samples
    stay within 30 nats of the reference (measured about -15)."""
    testbed = get_testbed("digits64")
    sch = DDPMSchedule.linear(1000)
    model = testbed.eps_model(sch)
    n = 300
    ref = testbed.sample(n, torch.Generator().manual_seed(7))
    kw = {"nfe": 20, "parameterization": "eps"}
    off = sample(
        model,
        (n, 64),
        sch,
        "pmm",
        max_gain=None,
        noise_by="substep",
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    on = sample(model, (n, 64), sch, "pmm", generator=torch.Generator().manual_seed(0), **kw)
    gap_off = float(metrics.log_density_gap(testbed, off.samples, ref))
    assert not math.isfinite(gap_off) or gap_off < -100.0
    assert off.fallbacks.sum() == 0
    assert torch.isfinite(on.samples).all()
    assert abs(float(metrics.log_density_gap(testbed, on.samples, ref))) < 30.0
    assert on.fallbacks.shape == (n,) and int(on.fallbacks.sum()) > 0
    assert int(on.fallbacks.max()) <= len(on.blocks)


def test_guard_is_silent_where_nothing_amplifies():
    """A linear model whose corrections have gain far below 1: the guard changes nothing."""
    sch = DDPMSchedule.linear(100, beta_start=1e-3, beta_end=0.2)
    kw = {"K": 10, "parameterization": "eps", "noise_by": "substep"}
    a = sample(lambda x, t: 0.01 * x, (8, 3), sch, generator=torch.Generator().manual_seed(2), **kw)
    b = sample(
        lambda x, t: 0.01 * x,
        (8, 3),
        sch,
        max_gain=None,
        generator=torch.Generator().manual_seed(2),
        **kw,
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    assert a.fallbacks.tolist() == [0] * 8


# ----------------------------------------------------------------------------- issue 12
@pytest.mark.parametrize("method", ["pmm", "ddpm", "ddim", "dpmsolver++"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_starting_noise_is_refused_before_any_call(method, bad):
    calls = []

    def model(x, t):
        calls.append(1)
        return 0.0 * x

    x_T = torch.zeros(4, 3)
    x_T[2, 1] = bad
    with pytest.raises(
        ValueError, match=r"x_T has NaN or inf in 1 of its 4 samples \(first: \[2\]"
    ):
        sample(model, x_T, "linear", method, **({"nfe": 20} if method == "pmm" else {}))
    assert calls == []


@pytest.mark.parametrize("method", ["pmm", "ddpm", "ddim", "dpmsolver++"])
def test_a_state_that_overflows_names_the_step_and_timestep(method):
    """Finite model outputs, a finite but huge start: the steps' ``a x`` (a > 1)
    overflow float32, and the error says where, not the model's fault."""
    x_T = torch.full((2, 3), 3.0e38)
    with pytest.raises(
        FloatingPointError, match=r"state became NaN or inf at step \d+ of \d+ \(timestep \d+\)"
    ):
        sample(lambda x, t: 0.0 * x, x_T, "linear", method, **({"K": 5} if method == "pmm" else {}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nfe": True}, "nfe must be a finite number"),
        ({"nfe": float("nan")}, "nfe must be a finite number"),
        ({"K": True}, "K must be an integer"),
        ({"steps": True, "method": "ddpm"}, "steps must be an integer"),
        ({"max_gain": 0.0}, "max_gain must be"),
        ({"max_gain": True}, "max_gain must be"),
        ({"parameterization": "v"}, "parameterization must be one of"),
        ({"eta": np.float32(-1.0), "method": "ddim"}, "eta must be"),
    ],
)
def test_options_are_checked_once_with_booleans_refused(kwargs, match):
    args = {"method": "pmm"} | kwargs
    with pytest.raises(ValueError, match=match):
        sample(lambda x, t: 0.0 * x, (2, 3), "linear", **args)


def test_numpy_scalars_are_accepted():
    out = sample(
        lambda x, t: 0.0 * x,
        (2, 3),
        "linear",
        "pmm",
        nfe=np.float32(20.0),
        data_var=np.float64(0.1),
    )
    assert out.samples.shape == (2, 3)


# ----------------------------------------------------------------------------- gap-by-gap noise
def _pmm_runs(
    noise_by, coefficients, seed, B, parameterization="eps", blocks=None, stop=0, x_scale=1.0
):
    from pmm_pymc.diffusion.layout import plan_blocks
    from pmm_pymc.diffusion.noise import RandomSource
    from pmm_pymc.diffusion.sampler import sample_pmm

    T = 40
    sch = DDPMSchedule.linear(T, beta_start=1e-3, beta_end=0.4)
    grid = np.arange(T - 1, stop - 1, -1)
    blocks = blocks or (8, 7, 10, 5, 10)
    plan = plan_blocks(sch, grid, blocks, coefficients(sch), parameterization)
    source = RandomSource(torch.Generator().manual_seed(seed), B, torch.device("cpu"))
    x = x_scale * torch.randn(
        B, 2, generator=torch.Generator().manual_seed(100), dtype=torch.float64
    )
    return sample_pmm(toy_eps(T), x, plan, source, sch, max_gain=None, noise_by=noise_by)


@pytest.mark.parametrize("parameterization", ["eps", "x0"])
def test_gap_by_gap_is_the_substep_rollout_without_noise(parameterization):
    """With the noise switched off the gap rollout is the sub-step rollout, midpoints and
    corrections included (same uniforms, so the same fired midpoints): equal to float64
    rounding (1e-10)."""
    from pmm_pymc.diffusion.layout import ddpm_coefficients

    def silent(sch):
        return lambda t, tp: (*ddpm_coefficients(sch, t, tp, "beta")[:2], 0.0)

    a = _pmm_runs("gap", silent, 3, 64, parameterization)
    b = _pmm_runs("substep", silent, 3, 64, parameterization)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-10, atol=1e-10)
    assert a.nfe.tolist() == b.nfe.tolist()


def test_gap_by_gap_noise_is_equal_in_distribution_to_substep_noise():
    """One Gaussian per gap against one per sub-step, 20,000 samples each, independent
    seeds: one 30-step block at high noise (timesteps 39 to 10, where a_r^2 reaches 1.7, so
    the gap variances differ from plain sums of s_r^2), then one of 10 to the clean end,
    with a nonlinear model. The means and variances of every coordinate agree within 4.5
    standard errors of their difference (Monte-Carlo error only; dropping the a_q^2
    factors of the gap variance fails it)."""
    from pmm_pymc.diffusion.layout import ddpm_coefficients

    def noisy(sch):
        return lambda t, tp: ddpm_coefficients(sch, t, t - 1, "beta")

    B = 20_000
    # from x = 0: the spread is the noise's (and the midpoint corrections')
    a = _pmm_runs("gap", noisy, 1, B, "eps", (30,), stop=10, x_scale=0.0).samples
    b = _pmm_runs("substep", noisy, 2, B, "eps", (30,), stop=10, x_scale=0.0).samples
    se_mean = ((a.var(0) + b.var(0)) / B).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4.5 * se_mean).all(), (a.mean(0), b.mean(0))
    # var of a sample variance ~ (m4 - s^4) / B
    m4 = lambda z: ((z - z.mean(0)) ** 4).mean(0)  # noqa: E731
    se_var = ((m4(a) - a.var(0) ** 2 + m4(b) - b.var(0) ** 2) / B).sqrt()
    assert ((a.var(0) - b.var(0)).abs() < 4.5 * se_var).all(), (a.var(0), b.var(0))


def test_the_loops_run_plans_built_outside():
    """The facade's loops are public: a plan and a noise source built by the caller give
    what ``sample`` gives (same generator, same numbers), and the one-step loops refuse a
    plan of longer blocks."""
    from pmm_pymc.diffusion.layout import ddpm_coefficients, plan_blocks, timestep_grid
    from pmm_pymc.diffusion.noise import RandomSource
    from pmm_pymc.diffusion.sampler import sample_ddpm, sample_pmm

    sch = DDPMSchedule.linear(100, beta_start=1e-3, beta_end=0.2)
    grid = timestep_grid(100, 20)
    coef = lambda t, tp: ddpm_coefficients(sch, t, tp, "beta_tilde")  # noqa: E731
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    source = RandomSource(torch.Generator().manual_seed(1), 4, torch.device("cpu"))
    out = sample_ddpm(toy_eps(100), x_T, plan_blocks(sch, grid, (1,) * 20, coef), source, sch)
    ref = sample(
        toy_eps(100), x_T, sch, "ddpm", steps=20, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(out.samples, ref.samples, rtol=0, atol=0)
    plan = plan_blocks(sch, grid, (5,) * 4, coef)
    with pytest.raises(ValueError, match="one-step blocks"):
        sample_ddpm(toy_eps(100), x_T, plan, source, sch)
    out = sample_pmm(toy_eps(100), x_T, plan, source, sch)
    assert out.blocks == (5,) * 4 and torch.isfinite(out.samples).all()
