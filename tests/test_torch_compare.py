"""PMM against LMC on torch log-densities: targets, compare_langevin, ``pmm-compare torch``."""

from __future__ import annotations

import math
from pathlib import Path

import arviz_stats as azs
import numpy as np
import pandas as pd
import pymc as pm
import pytest
import torch
import xarray as xr

from pmm_pymc.cli import main
from pmm_pymc.compare import compare_samplers
from pmm_pymc.compare import torch_langevin as tl
from pmm_pymc.compare.diagnostics import ExactMoments, reference_errors
from pmm_pymc.compare.torch_langevin import (
    LangevinSettings,
    compare_langevin,
    compare_target,
    default_samplers,
    target_reference,
)
from pmm_pymc.evaluation.torch_targets import get_target, list_targets
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

CUDA = torch.cuda.is_available()


def _normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).sum(1)


def _normal_reference(d: int) -> ExactMoments:
    zeros = xr.Dataset({"x": (["dim"], np.zeros(d))})
    ones = xr.Dataset({"x": (["dim"], np.ones(d))})
    return ExactMoments(mean=zeros, sd=ones)


@pytest.fixture(scope="module")
def normal_comparison():
    x0 = 2.0 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return compare_langevin(
        _normal_log_prob,
        x0,
        default_samplers(0.2, K=4),
        draws=150,
        tune=50,
        random_seed=1,
        reference=_normal_reference(2),
        dims=["dim"],
    )


# ------------------------------------------------------------------------------ tables
def test_torch_table_has_the_columns_of_the_pymc_table(normal_comparison):
    """The same tabulation code for both sides: identical columns, table and summary."""
    with pm.Model() as model:
        pm.Normal("x", 0.0, 1.0, shape=2)
    rng = np.random.default_rng(0)
    reference = xr.Dataset({"x": (["chain", "draw", "d"], rng.standard_normal((2, 200, 2)))})
    pymc_result = compare_samplers(
        model,
        {"PMM": PoissonMidpoint, "LMC": LangevinMC},
        draws=30,
        tune=30,
        chains=2,
        random_seed=0,
        reference=reference,
    )
    assert list(normal_comparison.table.columns) == list(pymc_result.table.columns)
    assert list(normal_comparison.summary.columns) == list(pymc_result.summary.columns)
    assert set(normal_comparison.error_curves) == {"PMM", "LMC", "LMC-half"}


def test_torch_table_matches_arviz_called_directly(normal_comparison):
    """Every ESS, R-hat and MCSE in the table is ArviZ's on the sampler's own draws."""
    for sampler, dt in normal_comparison.traces.items():
        rows = normal_comparison.table[normal_comparison.table["sampler"] == sampler]
        post = dt["posterior"].to_dataset()
        for column, value in (
            ("ess_bulk", azs.ess(post, method="bulk")),
            ("ess_tail", azs.ess(post, method="tail")),
            ("r_hat", azs.rhat(post)),
            ("mcse_mean", azs.mcse(post, method="mean")),
        ):
            np.testing.assert_allclose(rows[column].to_numpy(), value["x"].values, rtol=1e-12)
        # errors against the exact moments N(0, 1), in sd units (= 1)
        draws = post["x"].values.reshape(-1, 2)
        np.testing.assert_allclose(rows["mean_err"].to_numpy(), draws.mean(0), rtol=1e-12)
        np.testing.assert_allclose(rows["sd_err"].to_numpy(), draws.std(0, ddof=1) - 1, rtol=1e-12)
        assert rows["w1"].isna().all()  # no exact draws given
        grad = float(dt["sample_stats"]["n_steps"].sum())
        np.testing.assert_allclose(
            rows["ess_bulk_per_1k_grad"].to_numpy(), rows["ess_bulk"].to_numpy() * 1000 / grad
        )


def test_torch_budgets_are_matched_from_n_steps(normal_comparison):
    """PMM (first) sets the budget; each LMC spends it to within one draw (1 gradient)."""
    s = normal_comparison.summary.set_index("sampler")
    budget = normal_comparison.budget
    assert s.loc["PMM", "draws"] == 150 and s.loc["PMM", "budget_ratio"] == pytest.approx(1.0)
    # PMM with K = 4 costs 2 - 1/4 gradients per step on average; 4 chains x 150 steps
    assert budget == pytest.approx(150 * 1.75, rel=0.1)
    for name in ("LMC", "LMC-half"):
        assert s.loc[name, "grad_per_draw"] == 1.0
        assert s.loc[name, "draws"] == math.floor(budget + 1e-9)
        assert 1 - 1 / budget < s.loc[name, "budget_ratio"] <= 1.0
    assert s.loc["LMC-half", "step_size"] == pytest.approx(0.1)
    assert (s["divergences"] == 0).all() and (s["wall_time_s"] > 0).all()


def test_exact_moments_reference_errors():
    """mean_err, sd_err against exact moments; W1 against exact draws when given."""
    rng = np.random.default_rng(1)
    post = xr.Dataset({"x": (["chain", "draw", "d"], 2.0 + 3.0 * rng.standard_normal((2, 50, 1)))})
    exact = ExactMoments(
        mean=xr.Dataset({"x": (["d"], [2.0])}), sd=xr.Dataset({"x": (["d"], [3.0])})
    )
    errs = reference_errors(post, exact)
    v = post["x"].values.reshape(-1)
    assert errs["mean_err"].item() == pytest.approx((v.mean() - 2.0) / 3.0)
    assert errs["sd_err"].item() == pytest.approx((v.std(ddof=1) - 3.0) / 3.0)
    assert np.isnan(errs["w1"].item())
    with_draws = reference_errors(post, exact._replace(draws=post))
    assert with_draws["w1"].item() == 0.0  # the draws against themselves


# ------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("name", ["gaussian", "banana", "mixture"])
def test_exact_targets_moments_and_score(name):
    """Exact draws have the stated moments and the closed-form score is autograd's gradient.

    Tolerance: 5 standard errors of 40000 independent draws. Mean: sd / 200. Sd: its standard
    error is sd * sqrt((kurtosis - 1) / 4n); the largest kurtosis here is the banana's x2
    (y + 1.8 (z^2 - 1): 671.7 / 7.48^2 = 12.0), so sd * sqrt(11 / 160000) bounds them all.
    """
    target = get_target(name)
    draws = target.exact_sample(40000, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(draws.mean(0), target.mean, atol=5 * target.sd.max() / 200)
    np.testing.assert_allclose(draws.std(0, ddof=1), target.sd, rtol=5 * math.sqrt(11 / 160000))
    x = torch.as_tensor(draws[:64]).requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    torch.testing.assert_close(target.score(x.detach()), grad, rtol=1e-10, atol=1e-10)


def test_logistic_log_prob_is_the_pymc_model_up_to_a_constant():
    """The torch log-density is the one NUTS sampled for the shipped reference draws."""
    from pmm_pymc.evaluation.torch_targets import _logistic_data

    data = _logistic_data()
    with pm.Model() as model:
        beta = pm.Normal("beta", 0.0, float(data["prior_sd"]), shape=data["X"].shape[1])
        pm.Bernoulli("y", logit_p=pm.math.dot(data["X"], beta), observed=data["y"])
    logp = model.compile_logp()
    target = get_target("logistic")
    points = np.random.default_rng(0).normal(0.0, 1.0, size=(5, data["X"].shape[1]))
    ours = target.log_prob(torch.as_tensor(points)).numpy()
    theirs = np.array([logp({"beta": p}) for p in points])
    np.testing.assert_allclose(ours - theirs, (ours - theirs)[0], atol=1e-9)
    assert target.reference_draws.shape == (10, 1000, 5)
    assert (
        Path(__import__("pmm_pymc").__file__)
        .parent.joinpath("data/torch_targets/logistic.npz")
        .stat()
        .st_size
        < 1_000_000
    )


def test_every_target_gives_a_comparison():
    """Each bundled target runs end to end (tiny sizes) with its reference."""
    for name in list_targets():
        result = compare_target(
            name,
            {"PMM": LangevinSettings("pmm", get_target(name).default_step_size())},
            chains=2,
            draws=10,
            tune=5,
            budget="draws",
        )
        assert result.table["ref_sd"].notna().all(), name
        assert result.settings["target"] == name
    assert isinstance(target_reference(get_target("logistic")), xr.Dataset)


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the input was checked")

    monkeypatch.setattr(tl, "sample_langevin", refuse)


def _compare(**kwargs):
    args = {
        "log_prob": _normal_log_prob,
        "x0": torch.zeros(3, 2),
        "samplers": {"PMM": {"method": "pmm", "step_size": 0.1}},
        "draws": 5,
    }
    args.update(kwargs)
    return compare_langevin(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x0": torch.zeros(3)}, TypeError, r"shape \(chains, \*event\)"),
        ({"x0": torch.zeros(3, 2, dtype=torch.long)}, TypeError, "floating-point"),
        ({"log_prob": lambda x: x.sum()}, ValueError, "one value per chain"),
        ({"log_prob": lambda x: x}, ValueError, "one value per chain"),
        (
            {"log_prob": lambda x: torch.full((x.shape[0],), math.nan) * x.sum(1)},
            ValueError,
            "NaN or inf at x0",
        ),
        ({"samplers": {}}, TypeError, "non-empty mapping"),
        ({"samplers": {"A": {"method": "mala", "step_size": 0.1}}}, ValueError, "method"),
        ({"samplers": {"A": {"method": "pmm", "step_size": -1}}}, ValueError, "step_size"),
        ({"samplers": {"A": {"method": "pmm", "step_size": 0.1, "k": 8}}}, TypeError, "'k'"),
        ({"samplers": {"A": {"method": "pmm"}}}, TypeError, "step_size"),
        ({"samplers": {"A": 0.1}}, TypeError, "LangevinSettings"),
        ({"draws": 0}, ValueError, "draws"),
        ({"budget": "time"}, ValueError, "budget"),
        ({"reference": _normal_reference(3)}, ValueError, "3 components per draw"),
        ({"reference": _normal_reference(2), "var_name": "y"}, ValueError, "no variable 'y'"),
        (
            {"reference": xr.Dataset({"x": (["chain", "draw", "d"], np.full((1, 3, 2), np.nan))})},
            ValueError,
            "NaN or inf",
        ),
    ],
)
def test_bad_input_is_refused_before_sampling(no_sampling, kwargs, error, match):
    with pytest.raises(error, match=match):
        _compare(**kwargs)


def test_wrong_x0_shape_for_a_target_is_refused_before_sampling(no_sampling):
    target = get_target("gaussian")
    with pytest.raises(ValueError, match=r"fails at x0 of shape \(4, 3\).*\(chains, 10\)"):
        compare_langevin(
            target.log_prob, torch.zeros(4, 3, dtype=torch.float64), default_samplers(0.1)
        )


def test_unknown_target_lists_the_valid_ones(no_sampling):
    with pytest.raises(ValueError, match="unknown torch target 'nosuch'; valid: banana, gaussian"):
        compare_target("nosuch")


@pytest.mark.skipif(CUDA, reason="checks the message when CUDA is absent")
def test_cuda_without_a_gpu_is_refused(no_sampling, tmp_path, capsys):
    with pytest.raises(ValueError, match="CUDA is not available"):
        compare_target("banana", device="cuda")
    err = _usage_error(
        capsys, ["torch", "--target", "banana", "--out", str(tmp_path / "o"), "--device", "cuda"]
    )
    assert "CUDA is not available" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ CLI
def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_cli_unknown_target_lists_valid_ones(tmp_path, capsys):
    err = _usage_error(capsys, ["torch", "--target", "nosuch", "--out", str(tmp_path / "o")])
    assert "unknown torch target 'nosuch'; valid: banana, gaussian, logistic, mixture" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value"), [("--samplers", "PMM,NUTS"), ("--step-size", "0"), ("--K", "0")]
)
def test_cli_bad_options_are_usage_errors(tmp_path, capsys, option, value):
    argv = ["torch", "--target", "banana", "--out", str(tmp_path / "o"), option, value]
    _usage_error(capsys, argv)
    assert not (tmp_path / "o").exists()


def test_cli_end_to_end_on_a_small_target(tmp_path):
    """Report, PNG figures from arviz-plots, CSV tables and netCDF DataTrees."""
    out = tmp_path / "report"
    argv = [
        "torch",
        "--target",
        "banana",
        "--out",
        str(out),
        "--draws",
        "40",
        "--tune",
        "10",
        "--chains",
        "2",
        "--samplers",
        "PMM,LMC",
        "--no-progress",
    ]
    assert main(argv) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# PMM against LMC on torch log-densities")
    assert "pmm-compare torch --target banana" in report
    for png in ("error_vs_grad", "trace_PMM", "rank_LMC", "ess_PMM"):
        assert (out / "banana" / f"{png}.png").stat().st_size > 1000
        assert f"banana/{png}.png" in report
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["sampler"]) == ["PMM", "LMC"]
    dt = xr.open_datatree(out / "banana" / "PMM.nc")
    assert dt["posterior"]["x"].dims == ("chain", "draw", "dim")
    assert dt["posterior"]["x"].shape == (2, 40, 2)
    assert set(dt["sample_stats"].data_vars) == {"n_steps", "diverging", "step_size"}
    dt.close()


def test_report_writes_a_huge_number_in_scientific_notation():
    """A frozen runaway chain gives errors like 1.8e246: not 247 digits in the report."""
    from pmm_pymc.compare.report import markdown_table

    table = markdown_table(pd.DataFrame({"err": [1.8e246, 299906.0]}))
    assert "1.8e+246" in table and "| 299906 |" in table
