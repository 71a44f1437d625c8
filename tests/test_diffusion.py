"""The diffusion samplers: reference implementations, closed forms, NFE, RNG and input checks.

The models here are closed-form: a single Gaussian target ``N(mu, diag(v))``,
whose exact noise prediction under the VP forward process is
``eps(x, t) = sqrt(1 - ab) (x - sqrt(ab) mu) / (ab v + 1 - ab)``, and a smooth
nonlinear stand-in for a network. Nothing depends on the testbeds module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pmm_pymc.diffusion.sampler import (
    Network,
    expected_nfe,
    sample,
    sample_dpmsolver,
    timestep_grid,
)
from pmm_pymc.diffusion.schedules import DDPMSchedule

T_SMALL = 100
# the small test chains are deliberately coarse; the warning itself is tested below
pytestmark = pytest.mark.filterwarnings("ignore:PMM blocks reach stiffness:RuntimeWarning")


@pytest.fixture(scope="module")
def sched100() -> DDPMSchedule:
    # beta_end scaled so that 100 steps reach abar_T ~ 4e-5 like the 1000-step default
    return DDPMSchedule.linear(T_SMALL, beta_start=1e-3, beta_end=0.2)


def gaussian_eps(schedule: DDPMSchedule, mu: torch.Tensor, v: torch.Tensor):
    ac = torch.as_tensor(schedule.alphas_cumprod.copy())

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        ab = ac.to(x.device)[t].to(x.dtype)[:, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * v + 1 - ab)

    return model


def toy_eps(T: int):
    """A nonlinear, timestep-dependent stand-in for a network (elementwise, so batch-exact)."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype)[:, None] / T
        return torch.tanh(x) * (1.0 + tt) + 0.1 * x * tt

    return model


MU = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
V = torch.tensor([0.05, 0.3, 1.5], dtype=torch.float64)


# ----------------------------------------------------------------------------- DDPM reference
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_full_chain_matches_a_plain_loop(sched100, variance):
    """steps = T: the textbook ancestral loop (Ho et al. 2020, Algorithm 2), written here.

    Same generator, same draw order (noise for every step but the last), so the
    outputs agree to float64 rounding.
    """
    B, d = 5, 3
    model = toy_eps(T_SMALL)
    x_T = torch.randn(B, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(
        model,
        x_T,
        sched100,
        "ddpm",
        steps=T_SMALL,
        variance=variance,
        generator=torch.Generator().manual_seed(1),
    )

    g = torch.Generator().manual_seed(1)
    betas = torch.as_tensor(sched100.betas.copy())
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    x = x_T.clone()
    for t in range(T_SMALL - 1, -1, -1):
        eps = model(x, torch.full((B,), t, dtype=torch.long))
        mean = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:
            var = betas[t] if variance == "beta" else betas[t] * (1 - abar[t - 1]) / (1 - abar[t])
            x = mean + var.sqrt() * torch.randn(B, d, generator=g, dtype=torch.float64)
        else:
            x = mean
    torch.testing.assert_close(out.samples, x, rtol=1e-12, atol=1e-12)
    assert out.nfe.tolist() == [T_SMALL] * B
    assert out.n_passes == T_SMALL


def test_pmm_with_k1_is_ddpm(sched100):
    model = toy_eps(T_SMALL)
    a = sample(model, (4, 3), sched100, "pmm", K=1, generator=torch.Generator().manual_seed(3))
    b = sample(
        model, (4, 3), sched100, "ddpm", steps=T_SMALL, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    assert a.nfe.tolist() == b.nfe.tolist() == [T_SMALL] * 4


def plain_pmm_loop(drift, coef, x_T, T, K, seed):
    """PMM blocks of ``K`` over the ``T``-step fine chain, written from the paper's description.

    ``drift(x, t)`` is the drift at timestep ``t`` (an int) for the rows ``x``;
    ``coef(t) -> (a, g, s)`` the sub-step from ``t`` to ``t - 1``. Draw order (documented in
    ``sample`` for ``noise_by="substep"``): the uniforms of all the Bernoullis, shape (B, T),
    then the noise of each sub-step whose scale is not zero. Returns the samples and the
    network calls per sample.
    """
    B, d = x_T.shape
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((B, T), generator=g, dtype=torch.float64)
    x = x_T.clone()
    n_calls = np.full(B, T // K)
    for blk in range(T // K):
        ts = [T - 1 - (blk * K + i) for i in range(K)]
        b0 = drift(x, ts[0])
        mids, xi = [], x
        for t in ts:
            mids.append(xi)
            a, gg, s = coef(t)
            z = torch.randn(B, d, generator=g, dtype=torch.float64) if s != 0.0 else 0.0
            xi = a * xi + gg * b0 + s * z
        for m in range(B):
            for i in range(1, K):
                if u[m, blk * K + i] < 1.0 / K:
                    n_calls[m] += 1
                    b_i = drift(mids[i][m : m + 1], ts[i])
                    tail = math.prod(float(coef(t)[0]) for t in ts[i + 1 :])
                    xi[m] += tail * float(coef(ts[i])[1]) * K * (b_i[0] - b0[m])
        x = xi
    return x, n_calls


def test_pmm_matches_a_plain_loop_of_the_issue_formula():
    """Blocks of K over the fine chain, against :func:`plain_pmm_loop` (exact to 1e-12)."""
    T, K, B, d = 20, 5, 6, 2
    sch = DDPMSchedule.linear(T, beta_start=1e-2, beta_end=0.3)
    model = toy_eps(T)
    x_T = torch.randn(B, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # the scheme as published: the stability guard off (max_gain=None)
    out = sample(
        model,
        x_T,
        sch,
        "pmm",
        K=K,
        max_gain=None,
        noise_by="substep",
        generator=torch.Generator().manual_seed(5),
    )
    betas = torch.as_tensor(sch.betas.copy())
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)

    def coef(t):
        a = 1 / alphas[t].sqrt()
        gg = -betas[t] / (alphas[t].sqrt() * (1 - abar[t]).sqrt())
        s = 0.0 if t == 0 else (betas[t] * (1 - abar[t - 1]) / (1 - abar[t])).sqrt()
        return a, gg, s

    def eps(x, t):
        return model(x, torch.full((x.shape[0],), t, dtype=torch.long))

    x, n_calls = plain_pmm_loop(eps, coef, x_T, T, K, seed=5)
    torch.testing.assert_close(out.samples, x, rtol=1e-12, atol=1e-12)
    assert out.nfe.tolist() == n_calls.tolist()
    assert out.blocks == (K,) * (T // K)


def test_pmm_nonuniform_blocks_on_a_respaced_chain_match_a_plain_loop():
    """Blocks of different sizes over a respaced chain, with the variance beta.

    Written from the issue's definitions with the respaced betas
    beta' = 1 - abar_t / abar_t' (guided-diffusion's and diffusers' respacing):
    block k fires each midpoint i >= 1 with probability 1/k, evaluates eps at the
    midpoint's own timestep and adds (prod_{r>i} a_r) g_i k (eps_i - eps0).
    Draw order: the uniforms of all the Bernoullis, shape (B, steps), then the
    noise of each sub-step but the last one of the chain.
    """
    T, steps, blocks, B, d = 60, 14, (4, 1, 6, 3), 6, 2
    sch = DDPMSchedule.linear(T, beta_start=1e-3, beta_end=0.2)
    model = toy_eps(T)
    x_T = torch.randn(B, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(
        model,
        x_T,
        sch,
        "pmm",
        steps=steps,
        blocks=list(blocks),
        max_gain=None,
        noise_by="substep",
        variance="beta",
        generator=torch.Generator().manual_seed(7),
    )

    g = torch.Generator().manual_seed(7)
    u = torch.rand((B, steps), generator=g, dtype=torch.float64)
    ts = [int(t) for t in np.round(np.linspace(0, T - 1, steps))[::-1]] + [-1]
    abar = [float(a) for a in np.cumprod(1 - sch.betas)]

    def coef(j):  # the respaced step from ts[j] to ts[j + 1]
        ab_t = abar[ts[j]]
        ab_p = abar[ts[j + 1]] if ts[j + 1] >= 0 else 1.0
        beta = 1 - ab_t / ab_p
        a = 1 / math.sqrt(1 - beta)
        gg = -beta / (math.sqrt(1 - beta) * math.sqrt(1 - ab_t))
        return a, gg, (math.sqrt(beta) if ts[j + 1] >= 0 else 0.0)

    x, n_calls, start = x_T.clone(), np.zeros(B, dtype=np.int64), 0
    for k in blocks:
        js = list(range(start, start + k))
        eps0 = model(x, torch.full((B,), ts[js[0]], dtype=torch.long))
        n_calls += 1
        mids, xi = [], x
        for j in js:
            mids.append(xi)
            a, gg, s = coef(j)
            z = torch.randn(B, d, generator=g, dtype=torch.float64) if s != 0.0 else 0.0
            xi = a * xi + gg * eps0 + s * z
        for m in range(B):
            for i in range(1, k):
                if u[m, start + i] < 1.0 / k:
                    n_calls[m] += 1
                    eps_i = model(mids[i][m : m + 1], torch.tensor([ts[js[i]]]))
                    tail = math.prod(coef(j)[0] for j in js[i + 1 :])
                    xi[m] += tail * coef(js[i])[1] * k * (eps_i[0] - eps0[m])
        x, start = xi, start + k
    torch.testing.assert_close(out.samples, x, rtol=1e-12, atol=1e-12)
    assert out.nfe.tolist() == n_calls.tolist()
    assert out.blocks == blocks


# ----------------------------------------------------------------------------- diffusers' formulas
# Each reference below is the `step` of a diffusers scheduler written out with the
# timesteps as custom `timesteps` (diffusers 0.27 source), in float64.
def _abar_list(schedule: DDPMSchedule) -> list[float]:
    return [float(a) for a in np.cumprod(1 - schedule.betas)]


def test_respaced_ddpm_matches_diffusers_ddpm_step(sched100):
    """DDPMScheduler(clip_sample=False), "leading" spacing, fixed_small and fixed_large.

    prev_t is the next grid point (-1 after the last, with abar = 1),
    current_beta_t = 1 - abar_t / abar_prev, mean from pred_original_sample_coeff
    and current_sample_coeff, noise only while t > 0.
    """
    steps, B, d = 12, 4, 3
    grid = [int(t) for t in timestep_grid(T_SMALL, steps, "leading")]
    assert grid[-1] == 0  # so diffusers' "t > 0" and "not the last step" agree
    abar = _abar_list(sched100)
    model = toy_eps(T_SMALL)
    x_T = torch.randn(B, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for variance, variance_type in (("beta_tilde", "fixed_small"), ("beta", "fixed_large")):
        out = sample(
            model,
            x_T,
            sched100,
            "ddpm",
            steps=steps,
            spacing="leading",
            variance=variance,
            generator=torch.Generator().manual_seed(1),
        )
        g = torch.Generator().manual_seed(1)
        x = x_T.clone()
        for i, t in enumerate(grid):
            prev_t = grid[i + 1] if i + 1 < steps else -1
            alpha_prod_t = abar[t]
            alpha_prod_t_prev = abar[prev_t] if prev_t >= 0 else 1.0
            beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
            current_alpha_t = alpha_prod_t / alpha_prod_t_prev
            current_beta_t = 1 - current_alpha_t
            eps = model(x, torch.full((B,), t, dtype=torch.long))
            pred_original_sample = (x - beta_prod_t**0.5 * eps) / alpha_prod_t**0.5
            pred_original_sample_coeff = alpha_prod_t_prev**0.5 * current_beta_t / beta_prod_t
            current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
            x = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * x
            if t > 0:
                small = max(beta_prod_t_prev / beta_prod_t * current_beta_t, 1e-20)
                var = small if variance_type == "fixed_small" else current_beta_t
                x = x + var**0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
        torch.testing.assert_close(out.samples, x, rtol=1e-12, atol=1e-12)


def test_ddim_matches_diffusers_ddim_step(sched100):
    """DDIMScheduler(set_alpha_to_one=True, clip_sample=False), "leading" spacing, eta = 0.5.

    prev_timestep = t - T // steps (the next grid point of "leading"), the final
    alpha_cumprod is 1 (set_alpha_to_one=True), std_dev_t = eta sqrt(variance).
    diffusers also draws noise on the last step, where std_dev_t = 0: that draw
    comes last, so it cannot change the samples.
    """
    steps, B, d, eta = 10, 4, 3, 0.5
    grid = [int(t) for t in timestep_grid(T_SMALL, steps, "leading")]
    abar = _abar_list(sched100)
    model = toy_eps(T_SMALL)
    x_T = torch.randn(B, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(
        model,
        x_T,
        sched100,
        "ddim",
        steps=steps,
        spacing="leading",
        eta=eta,
        generator=torch.Generator().manual_seed(2),
    )
    g = torch.Generator().manual_seed(2)
    x = x_T.clone()
    for t in grid:
        prev_timestep = t - T_SMALL // steps
        alpha_prod_t = abar[t]
        alpha_prod_t_prev = abar[prev_timestep] if prev_timestep >= 0 else 1.0
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        eps = model(x, torch.full((B,), t, dtype=torch.long))
        pred_original_sample = (x - beta_prod_t**0.5 * eps) / alpha_prod_t**0.5
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * eps
        x = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction
        x = x + std_dev_t * torch.randn(B, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(out.samples, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [3, 10, 20])
def test_dpmsolver_matches_diffusers_multistep_scheduler(sched100, spacing, steps):
    """DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero").

    First order on the first step (lower_order_nums < 1) and on the last step
    (final sigma 0: the update is the predicted x0); every other step is
    second order, including the second-to-last one below 15 steps
    (``lower_order_second`` only lowers third order to second). The timesteps
    are those of its ``set_timesteps``: "linspace" takes steps + 1 points and
    drops t = 0.
    """
    if spacing == "linspace":
        grid = np.linspace(0, T_SMALL - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    else:
        grid = np.arange(T_SMALL, 0, -T_SMALL / steps).round().astype(np.int64) - 1
    grid = [int(t) for t in grid]
    abar = _abar_list(sched100)
    model = toy_eps(T_SMALL)
    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample(model, x_T, sched100, "dpmsolver++", steps=steps, spacing=spacing)

    sigmas = [math.sqrt((1 - abar[t]) / abar[t]) for t in grid] + [0.0]

    def alpha_sigma_lambda(sigma):
        alpha_t = 1 / (sigma**2 + 1) ** 0.5
        sigma_t = sigma * alpha_t
        return alpha_t, sigma_t, (math.log(alpha_t) - math.log(sigma_t) if sigma_t else math.inf)

    x, model_outputs, lower_order_nums = x_T.clone(), [None, None], 0
    for step_index, t in enumerate(grid):
        lower_order_final = step_index == steps - 1  # final_sigmas_type="zero"
        alpha_s0, sigma_s0, lambda_s0 = alpha_sigma_lambda(sigmas[step_index])
        eps = model(x, torch.full((5,), t, dtype=torch.long))
        model_outputs = [model_outputs[1], (x - sigma_s0 * eps) / alpha_s0]
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(sigmas[step_index + 1])
        h = lambda_t - lambda_s0
        if lower_order_nums < 1 or lower_order_final:
            x = (sigma_t / sigma_s0) * x - (alpha_t * (math.exp(-h) - 1.0)) * model_outputs[1]
        else:
            m0, m1 = model_outputs[1], model_outputs[0]
            lambda_s1 = alpha_sigma_lambda(sigmas[step_index - 1])[2]
            r0 = (lambda_s0 - lambda_s1) / h
            D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            x = (
                (sigma_t / sigma_s0) * x
                - (alpha_t * (math.exp(-h) - 1.0)) * D0
                - 0.5 * (alpha_t * (math.exp(-h) - 1.0)) * D1
            )
        lower_order_nums = min(lower_order_nums + 1, 2)
    torch.testing.assert_close(out.samples, x, rtol=1e-10, atol=1e-10)
    assert out.nfe.tolist() == [steps] * 5


# ----------------------------------------------------------------------------- closed forms
def test_ddim_matches_its_closed_form_on_a_gaussian(sched100):
    """On N(mu, diag v) with exact eps, DDIM (eta=0) keeps the standardised state
    z = (x - sqrt(ab) mu) / sqrt(ab v + 1 - ab) up to the factor

        rho = (sqrt(ab ab') v + sqrt((1-ab)(1-ab'))) / sqrt((ab v + 1 - ab)(ab' v + 1 - ab'))

    per step (Cauchy-Schwarz: rho <= 1, = 1 iff v = 1), so
    x_0 = mu + sqrt(v) z_T prod(rho). Exact up to rounding.
    """
    steps = 30
    model = gaussian_eps(sched100, MU, V)
    x_T = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(model, x_T, sched100, "ddim", steps=steps)
    grid = timestep_grid(T_SMALL, steps)
    ab = [float(sched100.alphas_cumprod[t]) for t in grid] + [1.0]
    rho = torch.ones(3, dtype=torch.float64)
    for a0, a1 in zip(ab[:-1], ab[1:]):
        num = math.sqrt(a0 * a1) * V + math.sqrt((1 - a0) * (1 - a1))
        rho = rho * num / ((a0 * V + 1 - a0) * (a1 * V + 1 - a1)).sqrt()
    z_T = (x_T - math.sqrt(ab[0]) * MU) / (ab[0] * V + 1 - ab[0]).sqrt()
    torch.testing.assert_close(out.samples, MU + V.sqrt() * z_T * rho, rtol=1e-10, atol=1e-10)


def test_ddpm_moments_match_their_closed_form_on_a_gaussian(sched100):
    """DDPM on N(mu, diag v): each step is x' = A x + c + sigma z with
    A, c from the posterior mean (x0_pred is the exact E[x0 | x_t]), so
    m' = A m + c, V' = A^2 V + sigma^2 from m = 0, V = 1 at x_T.

    Tolerance: 5 Monte-Carlo standard errors of the mean (sqrt(V/B)) and of
    the variance (V sqrt(2/(B-1)), Gaussian output), B = 4000.
    """
    steps, B = 25, 4000
    model = gaussian_eps(sched100, MU, V)
    x_T = torch.randn(B, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample(
        model, x_T, sched100, "ddpm", steps=steps, generator=torch.Generator().manual_seed(2)
    )
    grid = timestep_grid(T_SMALL, steps)
    ab = [float(sched100.alphas_cumprod[t]) for t in grid] + [1.0]
    m, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for a0, a1 in zip(ab[:-1], ab[1:]):
        beta = 1 - a0 / a1
        k0 = math.sqrt(a1) * beta / (1 - a0)  # posterior mean: k0 x0_pred + kx x
        kx = math.sqrt(1 - beta) * (1 - a1) / (1 - a0)
        # x0_pred = mu + sqrt(a0) v (x - sqrt(a0) mu) / (a0 v + 1 - a0)
        slope = math.sqrt(a0) * V / (a0 * V + 1 - a0)
        A = kx + k0 * slope
        c = k0 * (MU - slope * math.sqrt(a0) * MU)
        sig2 = beta * (1 - a1) / (1 - a0) if a1 < 1.0 else 0.0
        m, var = A * m + c, A * A * var + sig2
    x = out.samples
    assert torch.all((x.mean(0) - m).abs() < 5 * (var / B).sqrt())
    assert torch.all((x.var(0) - var).abs() < 5 * var * math.sqrt(2 / (B - 1)))
    # and the DDPM-25 output is measurably under-dispersed in the thin direction
    assert var[0] < 0.9 * V[0]


def test_ddim_eta1_is_ddpm_with_the_posterior_variance(sched100):
    model = toy_eps(T_SMALL)
    a = sample(
        model,
        (3, 2),
        sched100,
        "ddim",
        steps=20,
        eta=1.0,
        generator=torch.Generator().manual_seed(4),
    )
    b = sample(
        model, (3, 2), sched100, "ddpm", steps=20, generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-5, atol=1e-6)


def test_ode_solvers_converge_to_the_flow_map(sched100):
    """The probability-flow ODE on a Gaussian keeps z fixed: x_t = sqrt(ab) mu + s_t z, with
    s_t = sqrt(ab v + 1 - ab).

    DDIM's grid ends at t = 0, a step from the clean end: its error against
    x_0 = mu + sqrt(v) z is first order (halving the step cuts it by > 1.6).
    DPM-Solver++'s grid (diffusers') ends at t_last ~ T/steps and jumps from
    there to the predicted x0; t_last moves with steps, so its order is checked
    on nested grids over a fixed interval [96, 4], against the flow map to 4
    followed by that exact jump E[x0 | x_4]: second order, halving the step
    should cut the error by about 4 (we ask for > 3). Through ``sample`` it
    also beats DDIM against the exact flow map.
    """
    model = gaussian_eps(sched100, MU, V)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def flow(t):
        ab = float(sched100.alphas_cumprod[t])
        return math.sqrt(ab) * MU + (ab * V + 1 - ab).sqrt() * z

    def err(method, steps):
        out = sample(model, flow(T_SMALL - 1), sched100, method, steps=steps).samples
        return (out - (MU + V.sqrt() * z)).abs().max().item()

    e_ddim = [err("ddim", s) for s in (25, 50)]
    assert e_ddim[0] / e_ddim[1] > 1.6, e_ddim
    assert err("dpmsolver++", 50) < e_ddim[1]

    ab = float(sched100.alphas_cumprod[4])
    exact = MU + math.sqrt(ab) * V * (flow(4) - math.sqrt(ab) * MU) / (ab * V + 1 - ab)
    e_dpm = []
    for n in (23, 46):
        grid = np.linspace(96, 4, n + 1).astype(np.int64)  # integers: 92 / n is
        net = Network(model, torch.float64, torch.float64, immediate_check=True)
        out = sample_dpmsolver(net, flow(96), sched100, grid).samples
        e_dpm.append((out - exact).abs().max().item())
    assert e_dpm[0] / e_dpm[1] > 3.0, e_dpm  # measured 0.0323 / 0.0080 = 4.0


# ----------------------------------------------------------------------------- NFE
def test_pmm_mean_nfe_matches_the_formula():
    """Per sample, NFE = T/K + Binomial((T/K)(K-1), 1/K); mean (T/K)(2 - 1/K) = 78.4 for K = 25.

    Tolerance: 4 standard errors, sqrt((T/K)(K-1)(1/K)(1-1/K) / B). Also checks
    that the reported NFE is what the model was really asked for, and that a
    block is at most two sequential network passes.
    """
    T, K, B = 1000, 25, 2000
    sch = DDPMSchedule.linear(T)
    rows = []

    def model(x, t):
        rows.append(x.shape[0])
        return 0.1 * x

    out = sample(model, (B, 2), sch, "pmm", K=K, generator=torch.Generator().manual_seed(0))
    expected = (T / K) * (2 - 1 / K)
    se = math.sqrt((T / K) * (K - 1) * (1 / K) * (1 - 1 / K) / B)
    assert abs(out.nfe.double().mean().item() - expected) < 4 * se
    assert sum(rows) == int(out.nfe.sum())
    assert len(rows) == out.n_passes <= 2 * (T // K)
    assert expected_nfe(out.blocks) == pytest.approx(expected)


@pytest.mark.parametrize(("nfe", "steps"), [(30, 37), (60, 100)])  # x0: 1.25 nfe; eps: 5 nfe
def test_nfe_budget_policies(sched100, nfe, steps):
    for policy in ("stiffness", "uniform"):
        out = sample(
            toy_eps(T_SMALL),
            (2000, 1),
            sched100,
            "pmm",
            blocks=policy,
            nfe=nfe,
            generator=torch.Generator().manual_seed(0),
        )
        assert expected_nfe(out.blocks) <= nfe
        assert abs(out.nfe.double().mean().item() - expected_nfe(out.blocks)) < 0.5
        assert sum(out.blocks) == steps


def test_stiff_layouts_warn_and_the_default_does_not():
    """The thresholds behind the warning: block stiffness > 1 diverged on digits64."""
    sch = DDPMSchedule.linear()
    with pytest.warns(RuntimeWarning, match="stiffness"):
        sample(
            lambda x, t: 0.0 * x, (2, 2), sch, "pmm", nfe=20, parameterization="eps", max_gain=None
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample(lambda x, t: 0.0 * x, (2, 2), sch, "pmm")  # nfe=80 by default
        sample(lambda x, t: 0.0 * x, (2, 2), sch, "pmm", K=25)


# ----------------------------------------------------------------------------- RNG, dtypes, devices
@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("pmm", {"K": 4}),
        ("pmm", {"nfe": 20}),
        ("ddpm", {"steps": 30}),
        ("ddim", {"steps": 30, "eta": 0.5}),
    ],
)
def test_same_sample_whatever_the_batch(sched100, method, kw):
    """One generator per sample: sample m does not depend on who else is in the batch."""
    model = toy_eps(T_SMALL)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    big = sample(model, (5, 3), sched100, method, generator=gens(range(5)), **kw)
    small = sample(model, (2, 3), sched100, method, generator=gens([3, 1]), **kw)
    torch.testing.assert_close(small.samples, big.samples[[3, 1]], rtol=0, atol=0)
    assert small.nfe.tolist() == big.nfe[[3, 1]].tolist()


def test_same_seed_same_samples_and_different_seed_differs(sched100):
    model = toy_eps(T_SMALL)
    a = sample(model, (4, 3), sched100, "pmm", K=5, generator=torch.Generator().manual_seed(1))
    b = sample(model, (4, 3), sched100, "pmm", K=5, generator=torch.Generator().manual_seed(1))
    c = sample(model, (4, 3), sched100, "pmm", K=5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    assert not torch.allclose(a.samples, c.samples)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_model_keeps_a_float32_state(sched100, half):
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((3,), 0.5, dtype=half))

        def forward(self, x, t):
            seen.append(x.dtype)
            return torch.tanh(x) * self.w

    net = Net()
    out = sample(net, (4, 3), sched100, "pmm", K=4, generator=torch.Generator().manual_seed(0))
    assert set(seen) == {half}
    assert out.samples.dtype == torch.float32
    ref = sample(
        lambda x, t: torch.tanh(x) * 0.5,
        (4, 3),
        sched100,
        "pmm",
        K=4,
        generator=torch.Generator().manual_seed(0),
    )
    # only the model's own rounding differs: ~1e-2 relative per call for bf16
    torch.testing.assert_close(out.samples, ref.samples, rtol=0.1, atol=0.1)


def test_callback_and_progress(sched100, capsys):
    calls = []

    def cb(x, t, x0, nfe):
        calls.append((x.shape, t, x0.shape, nfe.clone()))

    out = sample(
        toy_eps(T_SMALL),
        (3, 2),
        sched100,
        "pmm",
        K=10,
        callback=cb,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(calls) == len(out.blocks) == 10
    assert [c[1] for c in calls] == list(range(T_SMALL - 1, -1, -10))
    assert calls[-1][3].tolist() == out.nfe.tolist()
    assert capsys.readouterr().err == ""  # progress bar off by default
    dpm_calls = []
    sample(
        toy_eps(T_SMALL),
        (3, 2),
        sched100,
        "dpmsolver++",
        steps=7,
        callback=lambda *a: dpm_calls.append(a[3]),
    )
    assert [int(n[0]) for n in dpm_calls] == list(range(1, 8))


def test_progress_bar_writes_when_asked(sched100, capsys):
    sample(toy_eps(T_SMALL), (3, 2), sched100, "ddpm", steps=5, progress=True)
    assert "5/5" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input
def _ok():
    return toy_eps(T_SMALL)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"method": "euler"}, ValueError, "method must be one of"),
        ({"schedule": "sigmoid"}, ValueError, "unknown schedule 'sigmoid'"),
        ({"schedule": [0.1, 0.2]}, TypeError, "schedule must be"),
        ({"method": "ddpm", "steps": 101}, ValueError, "steps must be an integer in \\[1, 100\\]"),
        ({"method": "ddpm", "steps": 0}, ValueError, "steps must be"),
        ({"method": "pmm", "K": 0}, ValueError, "K must be an integer in \\[1, 100\\]"),
        ({"method": "pmm", "K": 101}, ValueError, "K must be an integer in \\[1, 100\\]"),
        ({"method": "pmm", "steps": 50, "K": 60}, ValueError, "K must be"),
        ({"method": "pmm", "K": 2.5}, ValueError, "K must be"),
        ({"method": "pmm", "steps": 100, "blocks": [60, 30]}, ValueError, "sum to"),
        ({"method": "pmm", "steps": 2, "blocks": [2, 0]}, ValueError, "block size"),
        ({"method": "pmm", "blocks": "geometric"}, ValueError, "blocks must be one of"),
        ({"method": "pmm", "K": 4, "nfe": 30}, ValueError, "not both"),
        ({"method": "pmm", "nfe": 0}, ValueError, "nfe must be"),
        ({"method": "ddpm", "K": 4}, ValueError, "options of method='pmm'"),
        ({"method": "ddim", "eta": -1.0}, ValueError, "eta"),
        ({"variance": "learned"}, ValueError, "variance must be one of"),
        ({"data_var": 0.0}, ValueError, "data_var"),
        ({"spacing": "random"}, ValueError, "spacing must be one of"),
        ({"generator": [torch.Generator()]}, ValueError, "one per member"),
        ({"generator": 3}, TypeError, "generator"),
        ({"device": "cuda"}, ValueError, "device='cuda' but x_T is on cpu"),
        (
            {"dtype": torch.float16, "x_T": torch.zeros(2, 3, dtype=torch.float64)},
            ValueError,
            "dtype",
        ),
        ({"dtype": torch.int32}, TypeError, "dtype"),
        ({"x_T": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating"),
        ({"x_T": (2, 0)}, ValueError, "shape"),
        ({"model": "unet"}, TypeError, "callable"),
    ],
)
def test_bad_input(sched100, kwargs, exc, match):
    args = {"model": _ok(), "x_T": torch.zeros(2, 3), "schedule": sched100, "method": "pmm"}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sample(**args)


def test_model_output_checks(sched100):
    with pytest.raises(
        ValueError, match="model returned shape \\(2, 2\\) for input of shape \\(2, 3\\)"
    ):
        sample(lambda x, t: x[:, :2], (2, 3), sched100, "ddpm", steps=5)

    class Out:  # what a diffusers UNet returns
        def __init__(self, s):
            self.sample = s

    with pytest.raises(TypeError, match="unet\\(x, t\\).sample"):
        sample(lambda x, t: Out(x), (2, 3), sched100, "ddpm", steps=5)


@pytest.mark.parametrize("method", ["pmm", "ddpm", "dpmsolver++"])
def test_nan_from_the_model_names_step_and_timestep(sched100, method):
    def model(x, t):
        out = torch.tanh(x)
        if int(t.max()) < 40:
            out = out * float("nan")
        return out

    kw = {"K": 10} if method == "pmm" else {"steps": 10}
    with pytest.raises(FloatingPointError, match=r"NaN or inf at step \d+ of 10 \(timestep \d+\)"):
        sample(model, (3, 2), sched100, method, generator=torch.Generator().manual_seed(0), **kw)


def test_model_parameters_must_match_device_and_dtype(sched100):
    net64 = torch.nn.Linear(3, 3).double()
    with pytest.raises(
        ValueError, match="dtype=torch.float32 but the model's parameters are torch.float64"
    ):
        sample(_Wrap(net64), (2, 3), sched100, dtype=torch.float32)
    meta = _Wrap(torch.nn.Linear(3, 3, device="meta"))
    with pytest.raises(ValueError, match="model is on meta"):
        sample(meta, (2, 3), sched100)


class _Wrap(torch.nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x, t):
        return self.lin(x)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["pmm", "ddpm", "ddim", "dpmsolver++"])
def test_gpu_matches_cpu_with_cpu_generators(sched100, method):
    """CPU generators drive the GPU run (draws are moved), so it matches the CPU run."""
    model = toy_eps(T_SMALL)
    kw = {"K": 5} if method == "pmm" else {"steps": 20}
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    cpu = sample(model, (4, 3), sched100, method, generator=gens, **kw)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    gpu = sample(model, (4, 3), sched100, method, generator=gens, device="cuda", **kw)
    assert gpu.samples.device.type == "cuda"
    torch.testing.assert_close(gpu.samples.cpu(), cpu.samples, rtol=1e-4, atol=1e-5)
    assert gpu.nfe.tolist() == cpu.nfe.tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_half_model_and_cuda_generator(sched100):
    net = _Wrap(torch.nn.Linear(3, 3)).cuda().half()
    out = sample(
        net,
        (8, 3),
        sched100,
        "pmm",
        K=4,
        device="cuda",  # a shape for x_T: the device is not guessed from the model
        generator=torch.Generator("cuda").manual_seed(0),
    )
    assert out.samples.dtype == torch.float32 and out.samples.is_cuda
    assert torch.isfinite(out.samples).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("gens", ["cuda", "cpu-per-sample"])
@pytest.mark.parametrize("method", ["pmm", "ddim"])
def test_gpu_loop_never_synchronises(sched100, method, gens):
    """Nothing inside the loop may wait for the device, with a CUDA generator or
    with CPU generators (their draws go through pinned memory, non-blocking).

    torch's sync debug mode turns every host synchronisation into an error; it
    is switched on by the first callback (after the first block: the Bernoulli
    patterns and their index tensors are made before the loop) and off by the
    last one (the NaN check reads its flags once, after the loop).
    """
    kw = {"K": 5} if method == "pmm" else {"steps": 20, "eta": 0.5}
    n_calls = [0]
    n_blocks = T_SMALL // 5 if method == "pmm" else 20

    def callback(x, t, x0, nfe):
        n_calls[0] += 1
        torch.cuda.set_sync_debug_mode("error" if n_calls[0] < n_blocks else "default")

    try:
        out = sample(
            toy_eps(T_SMALL),
            (16, 3),
            sched100,
            method,
            device="cuda",
            generator=(
                torch.Generator("cuda").manual_seed(0)
                if gens == "cuda"
                else [torch.Generator().manual_seed(s) for s in range(16)]
            ),
            callback=callback,
            **kw,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert n_calls[0] == n_blocks and out.samples.is_cuda


# ----------------------------------------------------------------------------- diffusers wrapper
class _UNetOutput:
    def __init__(self, sample):
        self.sample = sample


class FakeUNet2DModel(torch.nn.Module):
    """Mimics diffusers' UNet2DModel: forward(sample, timestep) -> object with .sample."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.3))
        self.config = type("Config", (), {"sample_size": 4, "in_channels": 3})()
        self.seen_t = []

    @property
    def device(self):
        return self.scale.device

    def forward(self, sample, timestep, return_dict=True):
        assert sample.ndim == 4 and timestep.dtype == torch.long
        assert timestep.shape == (sample.shape[0],)
        self.seen_t.append(timestep.clone())
        return _UNetOutput(torch.tanh(sample) * self.scale)


class _FakeScheduler:
    betas = torch.linspace(1e-4, 0.02, 1000)
    config = type("Config", (), {"prediction_type": "epsilon"})()


def test_diffusers_wrapper_with_a_fake_unet():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "diffusers_unet.py"
    spec = importlib.util.spec_from_file_location("diffusers_unet_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    unet = FakeUNet2DModel()
    out = mod.sample_unet(unet, _FakeScheduler(), 3, nfe=20)
    assert out.samples.shape == (3, 3, 4, 4) and torch.isfinite(out.samples).all()
    assert out.nfe.double().mean() < 25
    # PMM's midpoint pass carries several timesteps at once
    assert any(t.unique().numel() > 1 for t in unet.seen_t)
    # the wrapper is the one-liner, and per-image generators make image 1 batch-independent
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(mod.unet_eps(unet)(x, torch.tensor([5, 6])), torch.tanh(x) * 0.3)
    again = mod.sample_unet(unet, _FakeScheduler(), 2, nfe=20)
    torch.testing.assert_close(again.samples, out.samples[:2], rtol=0, atol=0)
    ddim = mod.sample_unet(unet, _FakeScheduler(), 2, method="ddim", nfe=10)
    assert ddim.nfe.tolist() == [10, 10]
