"""The frontier of bias against cost (pmm_pymc.compare.frontier) on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm
import pytest
import xarray as xr

from pmm_pymc.compare.frontier import (
    FrontierSetting,
    cost_to_reach,
    frontier,
    noise_floor,
    reference_points,
    where_pmm_wins,
)


def _exact_reference(n_chains: int = 4, n_draws: int = 25_000, seed: int = 0) -> xr.DataTree:
    """Independent draws of N(0, I_2): reference noise 1/sqrt(100,000) of a mean."""
    x = np.random.default_rng(seed).normal(size=(n_chains, n_draws, 2))
    ds = xr.Dataset({"x": (("chain", "draw", "x_dim_0"), x)})
    return xr.DataTree.from_dict({"posterior": ds})


@pytest.fixture(scope="module")
def gauss():
    with pm.Model() as model:
        pm.Normal("x", 0.0, 1.0, shape=2)
    return model


def test_frontier_of_lmc_on_a_gaussian_has_the_closed_form_bias(gauss):
    """LMC with step eta on N(0, 1) (M = I) has stationary sd 1/sqrt(1 - eta/2) exactly.

    Three steps, no warm-up, started at exact draws: the worst |sd error| of each point is
    within 1.5 times its own noise floor (the 95 % quantile of the worst error of noise
    alone) of the closed form, and grows with the step (the closed-form gaps, 0.09 and 0.17,
    are several floors wide). The mean has no bias: its worst error is under 1.5 floors. One
    PMM point checks the table's layout with another sampler.
    """
    steps = (0.1, 0.4, 0.8)
    settings = [
        FrontierSetting("LMC", "lmc", step_size=eta, extra={"precondition": None}) for eta in steps
    ]
    settings.append(FrontierSetting("PMM K=4", "pmm", 4, 0.4, extra={"precondition": None}))
    table = frontier(gauss, _exact_reference(), settings, chains=64, draws=600, tune=0)
    assert list(table["sampler"]) == ["LMC"] * 3 + ["PMM K=4"]
    assert list(table["setting"]) == ["eta=0.1", "eta=0.4", "eta=0.8", "eta=0.4"]
    np.testing.assert_allclose(table["step_size"], [*steps, 0.4])
    assert not table["adapted"].any()
    lmc = table[table["sampler"] == "LMC"]
    exact = 1 / np.sqrt(1 - np.asarray(steps) / 2) - 1
    np.testing.assert_array_less(np.abs(lmc["max_abs_sd_err"] - exact), 1.5 * lmc["sd_floor"])
    np.testing.assert_array_less(lmc["max_abs_mean_err"], 1.5 * lmc["mean_floor"])
    assert np.all(np.diff(lmc["max_abs_sd_err"]) > 0)
    # A larger step mixes faster: fewer gradients per effective sample.
    assert np.all(np.diff(lmc["grad_per_ess"]) < 0)
    # PMM's gradients: 1 + 3/4 per draw on average.
    pmm = table[table["sampler"] == "PMM K=4"].iloc[0]
    assert abs(pmm["grad_evals"] / (64 * 600) - 1.75) < 0.02

    reach = cost_to_reach(table, levels=(0.2, 0.05, 0.001), error="max_abs_sd_err")
    row = reach.set_index("sampler").loc["LMC"]
    # 0.2 lies between the steps 0.4 (0.12) and 0.8 (0.29): an interpolated cost between theirs.
    costs = lmc["grad_per_ess"].to_numpy()
    assert costs[2] < row[0.2] < costs[1] and row["note@0.2"] == ""
    # The smallest step's bias (0.026) is under its noise floor at this run size and the next
    # step's is beyond 0.001: nothing within 0.001 is resolved, so the cost is not claimed.
    assert lmc["max_abs_sd_err"].iloc[0] < lmc["sd_floor"].iloc[0]
    assert row["note@0.001"] == "below floor" and np.isnan(row[0.001])
    line = where_pmm_wins(reach, error_name="worst sd error")
    assert line.startswith("PMM cheaper than LMC (worst sd error)")


def test_noise_floor_is_the_quantile_of_the_worst_of_noise():
    """The floor of p equal errors is the 95 % quantile of max |N(0, s^2)| over p (checked
    against 200,000 simulated maxima: the quantile's own sampling error is under 1 %)."""
    rng = np.random.default_rng(0)
    sigma = np.full(5, 0.02)
    worst = np.abs(rng.normal(size=(200_000, 5)) * sigma).max(axis=1)
    assert abs(noise_floor(sigma) / np.quantile(worst, 0.95) - 1) < 0.01


def test_reference_points_are_the_draws_in_unconstrained_space():
    """A HalfNormal's reference value s maps to log(s), raveled in value-variable order."""
    with pm.Model() as model:
        pm.Normal("m", 0.0, 1.0)
        pm.HalfNormal("s", 1.0)
    ds = xr.Dataset(
        {"m": (("chain", "draw"), [[0.5, 0.5]]), "s": (("chain", "draw"), [[2.0, 2.0]])}
    )
    points = reference_points(model, ds, 3)
    names = [v.name for v in model.continuous_value_vars]
    expected = {"m": 0.5, "s_log__": np.log(2.0)}
    np.testing.assert_allclose(points, np.tile([expected[n] for n in names], (3, 1)))
    with pytest.raises(ValueError, match=r"no draws of the free variable\(s\) \['s'\]"):
        reference_points(model, ds[["m"]], 3)


def test_bad_frontier_options_raise(gauss):
    ref = _exact_reference(1, 10)
    with pytest.raises(ValueError, match="settings is empty"):
        frontier(gauss, ref, [])
    with pytest.raises(ValueError, match="exactly one of step_size and target_accept"):
        frontier(gauss, ref, [FrontierSetting("LMC", "lmc")])
    with pytest.raises(ValueError, match="start must be 'reference' or 'jitter'"):
        frontier(gauss, ref, [FrontierSetting("LMC", "lmc", step_size=0.1)], start="prior")
    with pytest.raises(ValueError, match="error must be one of"):
        cost_to_reach(pd.DataFrame({"sampler": []}), error="w1")


def test_plot_frontier_writes_a_png(tmp_path):
    """The figure of a small synthetic table: a curve, an adapted point and a NUTS star."""
    pytest.importorskip("matplotlib")
    from pmm_pymc.compare.plots import plot_frontier

    table = pd.DataFrame(
        {
            "sampler": ["LMC", "LMC", "LMC", "NUTS"],
            "step_size": [0.1, 0.2, 0.15, np.nan],
            "target_accept": [np.nan, np.nan, 0.9, np.nan],
            "grad_per_ess": [20.0, 10.0, 14.0, 60.0],
            "max_abs_mean_err": [0.02, 0.05, 0.03, 0.01],
            "max_abs_sd_err": [0.03, 0.08, 0.05, 0.02],
            "mean_floor": [0.02] * 4,
            "sd_floor": [0.02] * 4,
        }
    )
    path = plot_frontier(table, tmp_path / "f.png", title="t")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
