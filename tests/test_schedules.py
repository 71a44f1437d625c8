"""Noise schedules, timestep grids and PMM block layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pmm_pymc.diffusion.sampler import expected_nfe, pmm_blocks, timestep_grid
from pmm_pymc.diffusion.schedules import DDPMSchedule, get_schedule


def test_linear_schedule_values():
    s = DDPMSchedule.linear()
    assert s.T == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(s.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - s.betas), rtol=1e-15)
    # the well-known value of the DDPM schedule: abar_T ~ 4.0e-5
    assert s.alphas_cumprod[-1] == pytest.approx(4.035e-5, rel=1e-3)


def test_cosine_schedule_follows_its_formula():
    T, s_off = 1000, 0.008
    s = DDPMSchedule.cosine(T)

    def f(u):
        return math.cos((u + s_off) / (1 + s_off) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert s.alphas_cumprod[t] == pytest.approx(f((t + 1) / T) / f(0.0), rel=1e-9)
    assert s.betas.max() <= 0.999
    assert np.all(np.diff(s.alphas_cumprod) < 0)


def test_from_betas_and_get_schedule():
    betas = torch.linspace(1e-3, 0.1, 50)
    s = DDPMSchedule.from_betas(betas, name="mine")
    assert s.T == 50 and s.name == "mine"
    np.testing.assert_allclose(s.betas, betas.double().numpy())
    assert get_schedule(s) is s
    assert get_schedule("cosine").name == "cosine" and get_schedule("linear").T == 1000
    assert "T=50" in repr(s)


class _Config:
    def __init__(self, prediction_type):
        self.prediction_type = prediction_type


class FakeDiffusersScheduler:
    """Mimics the attributes of diffusers' DDPMScheduler that we read."""

    def __init__(self, prediction_type="epsilon"):
        self.betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
        self.config = _Config(prediction_type)


def test_from_diffusers_reads_the_betas():
    s = DDPMSchedule.from_diffusers(FakeDiffusersScheduler())
    np.testing.assert_allclose(s.betas, DDPMSchedule.linear().betas, rtol=1e-6)
    assert s.name == "diffusers:FakeDiffusersScheduler"


def test_from_diffusers_bad_input():
    with pytest.raises(ValueError, match="prediction_type='v_prediction'"):
        DDPMSchedule.from_diffusers(FakeDiffusersScheduler("v_prediction"))
    with pytest.raises(TypeError, match="betas"):
        DDPMSchedule.from_diffusers(object())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: DDPMSchedule.linear(0), "T must be"),
        (lambda: DDPMSchedule.linear(10, beta_start=0.1, beta_end=0.01), "beta_start"),
        (lambda: DDPMSchedule.cosine(10, max_beta=1.0), "max_beta"),
        (lambda: DDPMSchedule.cosine(10, s=-1.0), "s must be"),
        (lambda: DDPMSchedule.cosine(10, s=True), "s must be a finite number"),
        (lambda: DDPMSchedule.cosine(10, max_beta=True), "max_beta must be a finite number"),
        (lambda: DDPMSchedule.linear(10, beta_start=float("nan")), "beta_start must be"),
        (lambda: DDPMSchedule.linear(10, beta_end=True), "beta_end must be a finite number"),
        (lambda: DDPMSchedule.linear(True), "T must be"),
        (lambda: DDPMSchedule.from_betas([0.1, 1.0]), "in \\(0, 1\\)"),
        (lambda: DDPMSchedule.from_betas([0.1, float("nan")]), "in \\(0, 1\\)"),
        (lambda: DDPMSchedule.from_betas([[0.1, 0.2]]), "1-D"),
        (lambda: get_schedule("sigmoid"), "unknown schedule 'sigmoid'"),
    ],
)
def test_schedule_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_schedule_options_accept_numpy_scalars():
    """Options go through pmm_pymc._validate: numpy scalars are numbers."""
    a = DDPMSchedule.linear(np.int64(10), beta_start=np.float32(1e-3), beta_end=np.float32(0.02))
    b = DDPMSchedule.linear(
        10, beta_start=float(np.float32(1e-3)), beta_end=float(np.float32(0.02))
    )
    np.testing.assert_array_equal(a.betas, b.betas)
    c = DDPMSchedule.cosine(np.int64(10), s=np.float32(0.008), max_beta=np.float64(0.999))
    assert c.T == 10


def test_get_schedule_type_error():
    with pytest.raises(TypeError, match="DDPMSchedule"):
        get_schedule(3)


# ----------------------------------------------------------------------------- grids
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading", "quadratic"])
@pytest.mark.parametrize("steps", [1, 7, 50, 999, 1000])
def test_timestep_grid(spacing, steps):
    t = timestep_grid(1000, steps, spacing)
    assert t.shape == (steps,) and t.dtype == np.int64
    assert np.all(np.diff(t) < 0) and t[0] <= 999 and t[-1] >= 0
    if steps == 1000:
        np.testing.assert_array_equal(t, np.arange(999, -1, -1))
    if spacing in ("linspace", "trailing") and steps > 1:
        assert t[0] == 999
    if spacing == "linspace" and steps > 1:
        assert t[-1] == 0


@pytest.mark.parametrize("T", [100, 999, 1000])
def test_trailing_grid_is_diffusers_without_its_rounding_overrun(T):
    """diffusers' "trailing" is round(arange(T, 0, -T/steps)) - 1. For some steps
    (T=1000: 61, 103, ...) floating-point rounding gives that arange steps + 1
    entries, the last one -1 (not a timestep); ours keeps the first steps entries.
    """
    for steps in range(1, T + 1):
        t = timestep_grid(T, steps, "trailing")
        diffusers = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
        np.testing.assert_array_equal(t, diffusers[:steps])
        assert np.all(np.diff(t) < 0) and t[-1] >= 0


def test_timestep_grid_bad_input():
    with pytest.raises(ValueError, match="steps must be"):
        timestep_grid(100, 101)
    with pytest.raises(ValueError, match="spacing must be one of"):
        timestep_grid(100, 10, "cubic")


# ----------------------------------------------------------------------------- block layouts
def test_uniform_blocks_and_the_nfe_formula():
    assert pmm_blocks(1000, K=25) == (25,) * 40
    assert pmm_blocks(10, K=4) == (4, 4, 2)
    assert expected_nfe((25,) * 40) == pytest.approx(40 * (2 - 1 / 25))
    layout = pmm_blocks(1000, nfe=80, policy="uniform")
    assert sum(layout) == 1000 and expected_nfe(layout) <= 80
    assert pmm_blocks(100, nfe=500) == (1,) * 100  # a budget above the chain: plain DDPM


@pytest.mark.parametrize("budget", [20, 50, 80, 200])
def test_stiffness_blocks_spend_the_budget_and_shrink_at_the_clean_end(budget):
    s = DDPMSchedule.linear()
    layout = pmm_blocks(1000, nfe=budget, schedule=s)
    assert sum(layout) == 1000 and all(k >= 1 for k in layout)
    nfe = expected_nfe(layout)
    # bisection on the number of blocks: one more block costs < 2 evaluations
    assert budget - 2 < nfe <= budget
    # the clean end (last fifth of the blocks) is finer than the middle
    n = len(layout)
    assert np.mean(layout[-max(1, n // 5) :]) < np.mean(layout[n // 3 : 2 * n // 3])


def test_stiffness_blocks_follow_data_var():
    s = DDPMSchedule.linear()
    thin = pmm_blocks(1000, nfe=80, schedule=s, data_var=1e-3)
    wide = pmm_blocks(1000, nfe=80, schedule=s, data_var=1.0)
    assert thin[-1] < wide[-1]  # a thinner direction asks for finer steps at the clean end


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of nfe"),
        ({"nfe": 10, "K": 2}, "exactly one of nfe"),
        ({"K": 0}, "K must be"),
        ({"K": 101}, "K must be"),
        ({"nfe": 0.5}, "nfe must be"),
        ({"nfe": 10, "policy": "geometric"}, "policy must be one of"),
        ({"nfe": 10}, "needs the schedule"),
        ({"nfe": 10, "schedule": DDPMSchedule.linear(100), "data_var": 0.0}, "data_var"),
        ({"nfe": 10, "schedule": DDPMSchedule.linear(100), "timesteps": [5, 4]}, "length"),
    ],
)
def test_pmm_blocks_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pmm_blocks(100, **kwargs)
