"""Tests of pmm_pymc.compare: budget matching, tables against ArviZ, reference errors, bad input."""

from __future__ import annotations

import arviz_stats as azs
import numpy as np
import pandas as pd
import pymc as pm
import pytest
import xarray as xr
from arviz_base import from_dict

from pmm_pymc.compare import compare_samplers, jittered_initvals
from pmm_pymc.compare.diagnostics import (
    component_labels,
    error_curve,
    gradient_evaluations,
    reference_errors,
)
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

DRAWS, TUNE, CHAINS, SEED = 100, 100, 2, 3


def _model() -> pm.Model:
    with pm.Model(coords={"k": ["a", "b"]}) as model:
        pm.Normal("x", 0.0, 1.0, dims="k")
        pm.HalfNormal("s", 1.0)
    return model


def _exact_reference(n_chains: int = 4, n_draws: int = 1000) -> xr.DataTree:
    """Independent draws of the model's posterior (its prior: nothing is observed)."""
    rng = np.random.default_rng(0)
    return from_dict(
        {
            "posterior": {
                "x": rng.standard_normal((n_chains, n_draws, 2)),
                "s": np.abs(rng.standard_normal((n_chains, n_draws))),
            }
        },
        dims={"x": ["k"]},
        coords={"k": ["a", "b"]},
    )


@pytest.fixture(scope="module")
def comparison():
    return compare_samplers(
        _model(),
        {"PMM": PoissonMidpoint, "LMC": LangevinMC, "NUTS": pm.NUTS},
        draws=DRAWS,
        tune=TUNE,
        chains=CHAINS,
        random_seed=SEED,
        reference=_exact_reference(),
    )


# ------------------------------------------------------------------------------ budget
def test_first_sampler_sets_the_gradient_budget(comparison):
    pmm = comparison.traces["PMM"]
    assert pmm["posterior"].sizes["draw"] == DRAWS
    grads = gradient_evaluations(pmm["sample_stats"].to_dataset())
    assert comparison.budget == pytest.approx(float(grads.sum("draw").mean()))


def test_every_sampler_spends_the_budget(comparison):
    """Each sampler is cut to the longest prefix whose mean cost per chain is within the
    budget, so it spends more than the budget less one draw's largest cost, and no more."""
    budget = comparison.budget
    for name, dt in comparison.traces.items():
        grads = gradient_evaluations(dt["sample_stats"].to_dataset())
        per_chain = float(grads.sum("draw").mean())
        assert per_chain <= budget + 1e-9, name
        assert per_chain > budget - float(grads.max()), name
        row = comparison.summary.set_index("sampler").loc[name]
        assert row["grad_evals"] == pytest.approx(float(grads.sum()))
        assert row["budget_ratio"] == pytest.approx(per_chain / budget)


def test_lmc_gets_pmm_cost_per_draw_times_the_draws(comparison):
    """LMC costs exactly one gradient per draw, so its draws are the budget's integer part:
    PMM's draws times PMM's mean cost per draw (2 - 1/K on average), about twice as many."""
    budget = comparison.budget
    summary = comparison.summary.set_index("sampler")
    assert summary.loc["LMC", "grad_per_draw"] == 1.0
    assert summary.loc["LMC", "draws"] == int(np.floor(budget + 1e-9))
    assert summary.loc["LMC", "draws"] / summary.loc["PMM", "draws"] == pytest.approx(
        summary.loc["PMM", "grad_per_draw"], abs=1.0 / DRAWS
    )


def test_integer_and_draws_budgets():
    model = _model()
    samplers = {"LMC": LangevinMC, "NUTS": pm.NUTS}
    fixed = compare_samplers(
        model, samplers, draws=50, tune=50, chains=2, random_seed=1, budget=120
    )
    assert fixed.budget == 120
    for name, dt in fixed.traces.items():
        grads = gradient_evaluations(dt["sample_stats"].to_dataset())
        assert 120 - float(grads.max()) < float(grads.sum("draw").mean()) <= 120, name
    plain = compare_samplers(
        model, samplers, draws=30, tune=30, chains=2, random_seed=1, budget="draws"
    )
    assert plain.budget is None
    assert set(plain.summary["draws"]) == {30}


# ------------------------------------------------------------------------------ tables vs ArviZ
def test_table_columns_are_arviz_diagnostics(comparison):
    for name, dt in comparison.traces.items():
        rows = comparison.table[comparison.table["sampler"] == name].set_index("label")
        posterior = dt["posterior"].to_dataset()[["x", "s"]]
        grads = float(gradient_evaluations(dt["sample_stats"].to_dataset()).sum())
        direct = {
            "ess_bulk": azs.ess(posterior, method="bulk"),
            "ess_tail": azs.ess(posterior, method="tail"),
            "r_hat": azs.rhat(posterior),
            "mcse_mean": azs.mcse(posterior, method="mean"),
        }
        for column, ds in direct.items():
            assert rows.loc["s", column] == pytest.approx(float(ds["s"]), rel=1e-12)
            assert rows.loc["x[a]", column] == pytest.approx(float(ds["x"].sel(k="a")), rel=1e-12)
            assert rows.loc["x[b]", column] == pytest.approx(float(ds["x"].sel(k="b")), rel=1e-12)
        assert rows["ess_bulk_per_1k_grad"].to_numpy() == pytest.approx(
            rows["ess_bulk"].to_numpy() * 1000.0 / grads
        )
        summary = comparison.summary.set_index("sampler").loc[name]
        assert summary["max_r_hat"] == pytest.approx(rows["r_hat"].max())
        assert summary["min_ess_bulk_per_1k_grad"] == pytest.approx(
            rows["ess_bulk_per_1k_grad"].min()
        )
        errs = reference_errors(
            dt["posterior"].to_dataset(), _exact_reference(), var_names=["x", "s"]
        )
        assert rows.loc[errs["label"], "mean_err"].to_numpy() == pytest.approx(
            errs["mean_err"].to_numpy()
        )


def test_summary_and_table_shapes(comparison):
    expected = {
        "sampler",
        "variable",
        "label",
        "mean",
        "sd",
        "ess_bulk",
        "ess_tail",
        "r_hat",
        "mcse_mean",
        "ess_bulk_per_1k_grad",
        "ess_tail_per_1k_grad",
        "ref_mean",
        "ref_sd",
        "mean_err",
        "sd_err",
        "w1",
    }
    assert expected <= set(comparison.table.columns)
    assert len(comparison.table) == 3 * 3  # 3 samplers x (x[a], x[b], s)
    assert list(comparison.summary["sampler"]) == ["PMM", "LMC", "NUTS"]
    for column in ("divergences", "wall_time_s", "max_abs_mean_err", "mean_w1", "step_size"):
        assert comparison.summary[column].notna().all(), column
    assert set(comparison.error_curves) == {"PMM", "LMC", "NUTS"}


def test_chains_start_from_distinct_jittered_points():
    model = _model()
    points = jittered_initvals(model, 3, seed=5)
    assert len(points) == 3
    assert not np.allclose(points[0]["x"], points[1]["x"])
    again = jittered_initvals(model, 3, seed=5)
    for a, b in zip(points, again):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # U(-1, 1) jitter around the initial point (0 for x, log 1 = 0 for s's log transform)
    assert all(np.all(np.abs(p["x"]) <= 1.0) for p in points)


# ------------------------------------------------------------------------------ reference errors
def _draws(values: dict[str, np.ndarray], dims: dict | None = None) -> xr.Dataset:
    return from_dict({"posterior": values}, dims=dims or {})["posterior"].to_dataset()


def test_reference_errors_known_answers():
    """Synthetic draws built from the reference draws themselves, with exact answers.

    A shift by ``c`` moves the mean by ``c`` and every quantile by ``c`` (W1 = |c|); a
    scaling by 2 about the mean doubles the sd and moves each order statistic by its
    distance to the mean (W1 = mean |r - m|). No Monte-Carlo error: exact to rounding.
    """
    rng = np.random.default_rng(1)
    ref = rng.gamma(2.0, size=(4, 500, 3))
    m, s = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0, ddof=1)
    shift = np.array([0.5, -1.0, 2.0])
    reference = _draws({"v": ref}, {"v": ["i"]})
    shifted = reference_errors(_draws({"v": ref + shift}, {"v": ["j"]}), reference)
    np.testing.assert_allclose(shifted["mean_err"], shift / s, rtol=1e-12)
    np.testing.assert_allclose(shifted["sd_err"], 0.0, atol=1e-12)
    np.testing.assert_allclose(shifted["w1"], np.abs(shift) / s, rtol=1e-9)
    scaled = reference_errors(_draws({"v": m + 2.0 * (ref - m)}), reference)
    np.testing.assert_allclose(scaled["mean_err"], 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled["sd_err"], 1.0, rtol=1e-12)
    mad = np.abs(ref.reshape(-1, 3) - m).mean(0)
    np.testing.assert_allclose(scaled["w1"], mad / s, rtol=1e-9)
    assert list(shifted["label"]) == ["v[0]", "v[1]", "v[2]"]


def test_reference_errors_matches_components_by_position():
    """The reference's dims may be named differently (posteriordb vs PyMC coords)."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((2, 300, 2, 3))
    draws = _draws({"w": ref + np.arange(6).reshape(2, 3)}, {"w": ["row", "col"]})
    errs = reference_errors(draws, _draws({"w": ref}))
    s = ref.reshape(-1, 6).std(0, ddof=1)
    np.testing.assert_allclose(errs["mean_err"], np.arange(6) / s, rtol=1e-12)
    assert errs["label"].iloc[4] == "w[1, 1]"
    with pytest.raises(ValueError, match="components"):
        reference_errors(draws, _draws({"w": ref[..., :2]}))
    with pytest.raises(ValueError, match="share no variable"):
        reference_errors(draws, _draws({"u": ref}))


def test_error_curve_costs_and_final_point():
    """Prefix costs add up the n_steps of the draws of all chains; the last point of the curve
    is the error of all draws."""
    rng = np.random.default_rng(3)
    ref = _draws({"a": rng.standard_normal((2, 400))})
    draws = _draws({"a": 0.3 + rng.standard_normal((2, 64))})
    n_steps = xr.DataArray(np.full((2, 64), 3.0), dims=("chain", "draw"))
    curve = error_curve(draws, n_steps, ref, n_points=5, min_draws=4)
    assert curve["draws"].iloc[0] == 4 and curve["draws"].iloc[-1] == 64
    np.testing.assert_array_equal(curve["grad_evals"], 3.0 * 2 * curve["draws"])
    full = reference_errors(draws, ref)
    assert curve["max_abs_mean_err"].iloc[-1] == pytest.approx(abs(full["mean_err"].iloc[0]))
    same = error_curve(draws, n_steps, ref, n_points=np.int64(5), min_draws=np.int64(4))
    pd.testing.assert_frame_equal(same, curve)
    for bad in ({"n_points": True}, {"n_points": 0}, {"min_draws": 2.0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be an integer >= 1"):
            error_curve(draws, n_steps, ref, **bad)


def test_component_labels_use_coordinates():
    da = xr.DataArray(
        np.zeros((1, 2, 2, 2)), dims=("chain", "draw", "k", "j"), name="z", coords={"k": ["a", "b"]}
    )
    assert component_labels(da) == ["z[a, 0]", "z[a, 1]", "z[b, 0]", "z[b, 1]"]
    assert component_labels(xr.DataArray(np.zeros((1, 2)), dims=("chain", "draw"), name="q")) == [
        "q"
    ]


def test_gradient_evaluations_needs_n_steps():
    with pytest.raises(ValueError, match="n_steps"):
        gradient_evaluations(xr.Dataset({"accept": (("chain", "draw"), np.ones((1, 2)))}))


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def no_sampling(monkeypatch):
    """Bad input must be refused before the first pm.sample call."""

    def fail(*args, **kwargs):
        raise AssertionError("pm.sample was called")

    monkeypatch.setattr(pm, "sample", fail)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"draws": 0}, "draws must be an integer >= 1, got 0"),
        ({"chains": 0}, "chains must be an integer >= 1, got 0"),
        ({"draws": 2.5}, "draws must be an integer >= 1, got 2.5"),
        ({"tune": -1}, "tune must be an integer >= 0, got -1"),
        ({"budget": "time"}, "budget must be 'gradients', 'draws' or a positive integer"),
        ({"budget": 0}, "budget must be an integer >= 1, got 0"),
    ],
)
def test_bad_counts(no_sampling, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_samplers(_model(), {"LMC": LangevinMC}, **kwargs)


@pytest.mark.parametrize(
    ("sampler", "match"),
    [
        (42, r"samplers\['bad'\] must be a PyMC step .* got int: 42"),
        ("NUTS", r"samplers\['bad'\] must be a PyMC step .* got str: 'NUTS'"),
        (dict, r"samplers\['bad'\] must be a PyMC step .* got the class dict"),
        (lambda: "not a step", r"samplers\['bad'\] must be a PyMC step .* got str"),
        ([], r"samplers\['bad'\] must be a PyMC step .* got a list"),
    ],
)
def test_unknown_sampler_object(no_sampling, sampler, match):
    with pytest.raises(TypeError, match=match):
        compare_samplers(_model(), {"LMC": LangevinMC, "bad": sampler})


def test_empty_or_badly_keyed_samplers(no_sampling):
    with pytest.raises(TypeError, match="non-empty mapping"):
        compare_samplers(_model(), {})
    with pytest.raises(TypeError, match="sampler names must be str"):
        compare_samplers(_model(), {1: LangevinMC})


def test_step_bound_to_another_model(no_sampling):
    other = _model()
    with other:
        step = pm.NUTS()
    with pytest.raises(ValueError, match=r"samplers\['NUTS'\] .* bound to another model"):
        compare_samplers(_model(), {"NUTS": step})


def test_step_instance_on_the_model_is_accepted(no_sampling):
    """A step built on the model passes validation (and reaches pm.sample)."""
    model = _model()
    with model:
        step = pm.NUTS()
    with pytest.raises(AssertionError, match="pm.sample was called"):
        compare_samplers(model, {"NUTS": step}, draws=5, tune=5, chains=1)


def test_sampler_without_gradient_count(no_sampling):
    with pytest.raises(ValueError, match=r"\['MH'\] report none; use budget='draws'"):
        compare_samplers(_model(), {"LMC": LangevinMC, "MH": pm.Metropolis})


def test_model_without_continuous_variables(no_sampling):
    with pm.Model() as model:
        pm.Poisson("n", 3.0)
    with pytest.raises(ValueError, match=r"no continuous free variable.*\['n'\]"):
        compare_samplers(model, {"LMC": LangevinMC})


def test_reference_with_wrong_names_or_shapes(no_sampling):
    rng = np.random.default_rng(0)
    wrong_name = from_dict({"posterior": {"y": rng.standard_normal((2, 10))}})
    with pytest.raises(ValueError, match="'y'"):
        compare_samplers(_model(), {"LMC": LangevinMC}, reference=wrong_name)
    wrong_shape = from_dict({"posterior": {"x": rng.standard_normal((2, 10, 3))}})
    with pytest.raises(ValueError, match="'x'"):
        compare_samplers(_model(), {"LMC": LangevinMC}, reference=wrong_shape)
    with pytest.raises(TypeError, match="reference"):
        compare_samplers(_model(), {"LMC": LangevinMC}, reference=pd.DataFrame())


@pytest.mark.parametrize(
    ("var_names", "match"),
    [
        (["nosuch"], r"var_names: unknown variable\(s\) \['nosuch'\]; valid: x, s"),
        # a known name next to an unknown one: refused, not silently dropped
        (["x", "nosuch"], r"unknown variable\(s\) \['nosuch'\]"),
        ([], "var_names is empty; give at least one of: x, s"),
        ("x", r"var_names must be a list of variables, got the string 'x'; pass \['x'\]"),
        (["x", "x"], r"var_names lists \['x'\] more than once"),
        ([1], "var_names must hold variables as strings"),
        (["s_log__"], r"unknown variable\(s\) \['s_log__'\]"),  # a value variable
    ],
)
def test_bad_var_names(no_sampling, var_names, match):
    with pytest.raises(ValueError, match=match):
        compare_samplers(_model(), {"LMC": LangevinMC}, var_names=var_names)


def _reference(x: np.ndarray, s: np.ndarray) -> xr.DataTree:
    return from_dict({"posterior": {"x": x, "s": s}}, dims={"x": ["k"]}, coords={"k": ["a", "b"]})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_reference_with_non_finite_values(no_sampling, bad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 50, 2))
    x[1, 7, 1] = bad
    with pytest.raises(
        ValueError,
        match=r"reference variable 'x' holds 1 non-finite value\(s\) \(NaN or inf\), the "
        r"first of them x\[1\] at chain 1, draw 7",
    ):
        compare_samplers(
            _model(), {"LMC": LangevinMC}, reference=_reference(x, rng.random((2, 50)))
        )


def test_reference_without_spread(no_sampling):
    rng = np.random.default_rng(1)
    constant = _reference(rng.standard_normal((2, 50, 2)), np.full((2, 50), 0.5))
    with pytest.raises(ValueError, match="reference variable 's' has no spread"):
        compare_samplers(_model(), {"LMC": LangevinMC}, reference=constant)
    single = _reference(rng.standard_normal((1, 1, 2)), rng.random((1, 1)))
    with pytest.raises(ValueError, match="reference variable 'x' has 1 draw"):
        compare_samplers(_model(), {"LMC": LangevinMC}, reference=single)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"random_seed": -1}, "random_seed must be an integer >= 0, got -1"),
        ({"random_seed": 1.5}, "random_seed must be an integer >= 0"),
        ({"progressbar": 1}, "progressbar must be True or False, got 1"),
        ({"chains": True}, "chains must be an integer >= 1, got True"),
    ],
)
def test_bad_seed_and_flags(no_sampling, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_samplers(_model(), {"LMC": LangevinMC}, **kwargs)


def test_var_names_may_name_deterministics_and_numpy_counts_are_accepted():
    """Given var_names make the table (a deterministic is a posterior variable too)."""
    model = _model()
    with model:
        pm.Deterministic("x_sum", model["x"].sum())
    result = compare_samplers(
        model,
        {"LMC": LangevinMC},
        draws=np.int64(20),
        tune=np.int64(20),
        chains=np.int64(1),
        random_seed=np.int64(2),
        budget="draws",
        var_names=["x_sum", "s"],
    )
    assert list(dict.fromkeys(result.table["variable"])) == ["x_sum", "s"]
    assert result.summary["draws"].tolist() == [20]


# ------------------------------------------------------------------------------ diffusion
def test_compare_diffusion_table_and_floor():
    """One cheap grid on the 2-D exact testbed: the long table summarises the runs."""
    from pmm_pymc.compare import compare_diffusion

    result = compare_diffusion(
        "mixture2d", ["ddim", "ddpm"], {"ddim": [5], "ddpm": [5, 10]}, seeds=[0, 1], n_samples=64
    )
    assert set(result.runs.groupby(["method", "target_nfe"]).size()) == {2}
    assert len(result.runs) == 2 * 3
    mmd = result.table[(result.table["metric"] == "mmd") & (result.table["method"] == "ddpm")]
    for _, row in mmd.iterrows():
        runs = result.runs[
            (result.runs["method"] == "ddpm") & (result.runs["target_nfe"] == row["target_nfe"])
        ]
        assert row["mean"] == pytest.approx(runs["mmd"].mean())
        assert row["sd"] == pytest.approx(runs["mmd"].std(ddof=1))
        assert row["nfe"] == row["target_nfe"]  # one network call per DDPM step
    assert "log_density_gap" in set(result.table["metric"])
    assert set(result.floor["metric"]) == set(result.table["metric"])
    tree = result.to_datatree()
    assert tree["runs"].sizes["seed"] == 2


def test_compare_diffusion_on_the_digits_network():
    """The trained network has no density: Fréchet on classifier features, no log-density gap."""
    from pmm_pymc.compare import compare_diffusion

    result = compare_diffusion("digits-net", ["ddim"], [5], seeds=[0], n_samples=80)
    metrics = set(result.table["metric"])
    assert "frechet" in metrics and "label_tv" in metrics and "log_density_gap" not in metrics
    assert np.isfinite(result.table["mean"]).all()
    tv = result.runs["label_tv"]
    assert ((tv >= 0) & (tv <= 1)).all()


def test_compare_diffusion_variants_run_under_their_label():
    """A named variant runs like its method and is reported apart; the guard's count is kept."""
    from pmm_pymc.compare import compare_diffusion

    result = compare_diffusion(
        "mixture2d",
        ["pmm"],
        [20],
        seeds=[0],
        n_samples=64,
        variants={"pmm-eps": {"method": "pmm", "parameterization": "eps"}},
    )
    assert list(result.runs["method"]) == ["pmm", "pmm-eps"]
    assert (result.runs["nfe"] <= 21).all() and (result.runs["fallbacks"] >= 0).all()
    with pytest.raises(ValueError, match="variant 'x' needs a method"):
        compare_diffusion("mixture2d", ["pmm"], [20], variants={"x": {"nfe": 3}})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"testbed": "cifar10"}, ValueError, "unknown testbed 'cifar10'; valid: .*mixture2d"),
        ({"methods": ["euler"]}, ValueError, r"unknown method\(s\) \['euler'\]"),
        ({"nfes": [0]}, ValueError, r"nfes\[0\] must be an integer >= 1, got 0"),
        ({"nfes": []}, ValueError, "nfes is empty; give at least one integer >= 1"),
        ({"nfes": [10, True]}, ValueError, r"nfes\[1\] must be an integer >= 1, got True"),
        ({"nfes": [10, 10]}, ValueError, r"nfes lists \[10\] more than once"),
        ({"nfes": {"ddim": [5, 5]}}, ValueError, r"nfes\['ddim'\] lists \[5\] more than once"),
        ({"seeds": [0, 0]}, ValueError, r"seeds lists \[0\] more than once"),
        ({"seeds": [-1]}, ValueError, r"seeds\[0\] must be an integer >= 0"),
        ({"n_samples": True}, ValueError, "n_samples must be an integer >= 2, got True"),
        ({"n_samples": 64.0}, ValueError, "n_samples must be an integer >= 2, got 64.0"),
        ({"methods": "ddim"}, ValueError, "methods must be a list of methods, got the string"),
        ({"methods": []}, ValueError, "methods is empty; give at least one of: pmm"),
        ({"methods": ["ddim", "ddim"]}, ValueError, r"methods lists \['ddim'\] more than once"),
        ({"metrics": "mmd"}, ValueError, "metrics must be a list of metrics, got the string"),
        ({"metrics": []}, ValueError, "metrics is empty; give at least one of: mmd"),
        ({"metrics": ["mmd", "fid"]}, ValueError, r"unknown metric\(s\) \['fid'\]"),
        ({"progressbar": "yes"}, ValueError, "progressbar must be True or False"),
        ({"nfes": {"ddpm": [10]}}, ValueError, "nfes is given per method"),
        ({"n_samples": 1}, ValueError, "n_samples must be an integer >= 2, got 1"),
        ({"seeds": []}, ValueError, "seeds is empty; give at least one integer >= 0"),
        ({"metrics": ["fid"]}, ValueError, r"unknown metric\(s\) \['fid'\]"),
        ({"testbed": object()}, TypeError, "testbed must be a name or have eps_model"),
    ],
)
def test_compare_diffusion_bad_input(monkeypatch, kwargs, error, match):
    from pmm_pymc.compare import diffusion

    def fail(*args, **kw):
        raise AssertionError("sampling started")

    monkeypatch.setattr(diffusion, "sample", fail)
    options = {"testbed": "mixture2d", "methods": ["ddim"], "nfes": [10]} | kwargs
    with pytest.raises(error, match=match):
        diffusion.compare_diffusion(options.pop("testbed"), **options)


def test_compare_diffusion_accepts_numpy_integers(monkeypatch):
    """Numpy integers are counts: validation passes and sampling starts."""
    from pmm_pymc.compare import diffusion

    def fail(*args, **kw):
        raise AssertionError("sampling started")

    monkeypatch.setattr(diffusion, "sample", fail)
    with pytest.raises(AssertionError, match="sampling started"):
        diffusion.compare_diffusion(
            "mixture2d",
            ["ddim"],
            [np.int64(10)],
            seeds=[np.int64(0)],
            n_samples=np.int64(16),
            metrics=["mmd"],
        )
