"""End-to-end tests of the ``pmm-compare`` command (pmm_pymc.cli)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from pmm_pymc.cli import main
from pmm_pymc.evaluation.posteriors import list_posteriors

POSTERIOR = "kidscore_momiq"  # 4 parameters: the cheapest bundled posterior to sample


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def mcmc_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mcmc") / "report"
    argv = [
        "mcmc",
        "--posterior",
        POSTERIOR,
        "--out",
        str(out),
        "--draws",
        "60",
        "--tune",
        "60",
        "--chains",
        "2",
        "--seed",
        "4",
        "--no-progress",
    ]
    assert main(argv) == 0
    return out


def test_mcmc_writes_report_figures_and_netcdf(mcmc_report):
    report = (mcmc_report / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# PMM against LMC and NUTS")
    assert "pmm-compare mcmc --posterior kidscore_momiq" in report
    # every figure the report embeds exists and is a PNG
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) == 1 + 3 * 3  # error-vs-cost, and trace/rank/ESS for 3 samplers
    for image in images:
        data = (mcmc_report / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", image
    # the overview table has a row per sampler with the budget-matched numbers
    summary = pd.read_csv(mcmc_report / "summary.csv")
    assert list(summary["sampler"]) == ["PMM", "LMC", "NUTS"]
    for _, row in summary.iterrows():
        assert f"| {POSTERIOR} | {row['sampler']} | {row['draws']} |" in report
    variables = pd.read_csv(mcmc_report / "variables.csv")
    assert set(variables["variable"]) >= {"beta", "sigma"}
    # the traces reload with xarray/arviz and hold the draws the summary counted
    for sampler in ("PMM", "LMC", "NUTS"):
        with xr.open_datatree(mcmc_report / POSTERIOR / f"{sampler}.nc") as dt:
            dt = dt.load()
        row = summary.set_index("sampler").loc[sampler]
        assert dt["posterior"].sizes == {"chain": 2, "draw": row["draws"]} | {
            d: s for d, s in dt["posterior"].sizes.items() if d not in ("chain", "draw")
        }
        assert float(dt["sample_stats"]["n_steps"].sum()) == row["grad_evals"]


def test_mcmc_refuses_non_empty_output_dir(mcmc_report, capsys):
    err = _usage_error(
        capsys, ["mcmc", "--posterior", POSTERIOR, "--out", str(mcmc_report), "--draws", "5"]
    )
    assert "exists and is not empty" in err and "--overwrite" in err


def test_unknown_posterior_lists_valid_ones(tmp_path, capsys):
    err = _usage_error(
        capsys, ["mcmc", "--posterior", "eight_school", "--out", str(tmp_path / "o")]
    )
    assert "unknown posterior 'eight_school'" in err
    for name in list_posteriors():
        assert name in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value"), [("--draws", "0"), ("--chains", "0"), ("--draws", "x"), ("--tune", "-1")]
)
def test_bad_counts_are_usage_errors(tmp_path, capsys, option, value):
    err = _usage_error(
        capsys, ["mcmc", "--posterior", POSTERIOR, "--out", str(tmp_path / "o"), option, value]
    )
    assert option in err and value in err


def test_unknown_sampler_is_a_usage_error(tmp_path, capsys):
    err = _usage_error(
        capsys,
        ["mcmc", "--posterior", POSTERIOR, "--out", str(tmp_path / "o"), "--samplers", "PMM,HMC"],
    )
    assert "unknown sampler(s) ['HMC']" in err


def test_unknown_testbed_lists_valid_ones(tmp_path, capsys):
    from pmm_pymc.evaluation.testbeds import list_testbeds

    err = _usage_error(capsys, ["diffusion", "--testbed", "cifar10", "--out", str(tmp_path / "o")])
    assert "unknown testbed 'cifar10'" in err
    for name in list_testbeds():
        assert name in err


def test_unknown_method_is_a_usage_error(tmp_path, capsys):
    err = _usage_error(
        capsys,
        [
            "diffusion",
            "--testbed",
            "mixture2d",
            "--out",
            str(tmp_path / "o"),
            "--methods",
            "pmm,euler",
        ],
    )
    assert "unknown method(s) ['euler']" in err


@pytest.mark.parametrize(("option", "value"), [("--n-samples", "1"), ("--seeds", "0")])
def test_bad_diffusion_counts_are_usage_errors(tmp_path, capsys, option, value):
    err = _usage_error(
        capsys,
        ["diffusion", "--testbed", "mixture2d", "--out", str(tmp_path / "o"), option, value],
    )
    assert option in err and value in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec", ["ddpm", "ddpm:0", ":80", "euler:80"])
def test_bad_extra_run_is_a_usage_error(tmp_path, capsys, spec):
    err = _usage_error(
        capsys,
        ["diffusion", "--testbed", "mixture2d", "--out", str(tmp_path / "o"), "--add", spec],
    )
    assert "--add" in err or "unknown method(s) ['euler']" in err


def test_diffusion_writes_report(tmp_path):
    out = tmp_path / "diffusion"
    argv = [
        "diffusion",
        "--testbed",
        "mixture2d",
        "--out",
        str(out),
        "--nfes",
        "10",
        "--seeds",
        "2",
        "--n-samples",
        "100",
        "--no-progress",
    ]
    assert main([*argv, "--methods", "pmm,ddim", "--add", "ddpm:20"]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert (out / "metric_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"
    assert "![metric against NFE](metric_vs_nfe.png)" in report
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["method"]) == {"pmm", "ddim", "ddpm"}
    assert set(metrics.loc[metrics["method"] == "ddpm", "target_nfe"]) == {20}
    assert set(metrics.loc[metrics["method"] != "ddpm", "target_nfe"]) == {10}
    assert (metrics["n_seeds"] == 2).all()
    with xr.open_datatree(out / "results.nc") as results:
        runs = results["runs"].to_dataset().load()
    assert runs.sizes["seed"] == 2 and runs.sizes["target_nfe"] == 2
    # ddim spends exactly one network call per step
    assert (runs["nfe"].sel(sampler="ddim", target_nfe=10).values == 10).all()
    # an existing report is refused, and replaced with --overwrite
    with pytest.raises(SystemExit):
        main([*argv, "--methods", "ddim"])
    assert main([*argv, "--methods", "ddim", "--overwrite", "--no-plots"]) == 0
    assert set(pd.read_csv(out / "metrics.csv")["method"]) == {"ddim"}
