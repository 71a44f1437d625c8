"""End-to-end tests of the ``pmm-compare`` command (pmm_pymc.cli)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from pmm_pymc.cli import main
from pmm_pymc.evaluation.posteriors import list_posteriors

ROOT = Path(__file__).resolve().parents[1]
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


# --------------------------------------------------------------------- bad output folders
# A refused run exits with status 2 and a one-line message, runs no sampler and leaves
# nothing on disk. The tests run as root, for whom no folder is read-only: an unwritable
# folder is simulated by making the probe file fail (monkeypatch), and, when not root, also
# for real with chmod.


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if any sampling starts."""
    from pmm_pymc.compare import diffusion, mcmc

    def fail(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(mcmc, "compare_samplers", fail)
    monkeypatch.setattr(diffusion, "compare_diffusion", fail)


def _mcmc(out, *extra: str) -> list[str]:
    return ["mcmc", "--posterior", POSTERIOR, "--out", str(out), *extra]


def _diffusion(out, *extra: str) -> list[str]:
    return ["diffusion", "--testbed", "mixture2d", "--out", str(out), *extra]


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_negative_seed_is_a_usage_error(tmp_path, capsys, no_sampling):
    err = _usage_error(capsys, _mcmc(tmp_path / "o", "--seed", "-1"))
    assert "argument --seed" in err and "-1" in err
    assert "Traceback" not in err
    assert _files(tmp_path) == []


@pytest.mark.parametrize("argv", [_mcmc, _diffusion])
def test_output_under_a_file_is_a_usage_error(tmp_path, capsys, no_sampling, argv):
    (tmp_path / "file").write_text("x")
    err = _usage_error(capsys, argv(tmp_path / "file" / "sub" / "out"))
    assert "cannot create output directory" in err and "is a file" in err
    assert _files(tmp_path) == [tmp_path / "file"]


def test_output_that_is_a_file_is_a_usage_error(tmp_path, capsys, no_sampling):
    (tmp_path / "file").write_text("x")
    err = _usage_error(capsys, _mcmc(tmp_path / "file", "--overwrite"))
    assert "exists and is not a directory" in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_under_a_root_that_cannot_hold_it(capsys, no_sampling):
    # /proc takes no new folders, even from root
    err = _usage_error(capsys, _mcmc("/proc/pmm-no-such-dir/out"))
    assert "cannot create output directory '/proc/pmm-no-such-dir/out'" in err
    assert not Path("/proc/pmm-no-such-dir").exists()


def _unwritable(monkeypatch) -> None:
    """Make every probe file fail as in a folder without write permission."""
    import errno
    import os

    from pmm_pymc.compare import report

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(report.tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("argv", [_mcmc, _diffusion])
def test_existing_unwritable_folder_is_a_usage_error(
    tmp_path, capsys, monkeypatch, no_sampling, argv
):
    out = tmp_path / "out"
    out.mkdir()
    _unwritable(monkeypatch)
    err = _usage_error(capsys, argv(out))
    assert f"cannot write to output directory {str(out)!r}: Permission denied" in err
    assert "Traceback" not in err
    assert _files(tmp_path) == [out]  # left as it was


def test_refused_output_leaves_no_folder_behind(tmp_path, capsys, monkeypatch, no_sampling):
    """Folders made to probe a missing --out are removed when the probe fails."""
    _unwritable(monkeypatch)
    err = _usage_error(capsys, _mcmc(tmp_path / "a" / "b" / "out"))
    assert "cannot create output directory" in err and "Permission denied" in err
    assert _files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_folder_is_a_usage_error(tmp_path, capsys, no_sampling):
    out = tmp_path / "out"
    out.mkdir(mode=0o500)
    try:
        err = _usage_error(capsys, _mcmc(out))
    finally:
        out.chmod(0o700)
    assert "cannot write to output directory" in err
    assert _files(tmp_path) == [out]


def test_check_output_dir_probes_and_leaves_nothing(tmp_path):
    from pmm_pymc.compare.report import check_output_dir

    out = tmp_path / "a" / "b"
    assert check_output_dir(out) == out
    assert _files(tmp_path) == []  # the writers create the folder
    out.mkdir(parents=True)
    (out / "old.md").write_text("x")
    assert check_output_dir(out, overwrite=True) == out
    assert _files(out) == [out / "old.md"]  # the probe file is gone
    with pytest.raises(ValueError, match="overwrite must be True or False"):
        check_output_dir(out, overwrite="yes")


def test_bad_device_is_a_usage_error(tmp_path, capsys, no_sampling):
    err = _usage_error(capsys, _diffusion(tmp_path / "o", "--device", "meta"))
    assert "--device 'meta'" in err
    err = _usage_error(capsys, _diffusion(tmp_path / "o", "--device", "nosuch"))
    assert "invalid --device 'nosuch'" in err
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    ("option", "value"), [("--nfes", "10,20,10"), ("--methods", "pmm,ddim,pmm")]
)
def test_repeated_values_are_usage_errors(tmp_path, capsys, no_sampling, option, value):
    err = _usage_error(capsys, _diffusion(tmp_path / "o", option, value))
    assert f"argument {option}" in err and "more than once" in err


def test_repeated_sampler_is_a_usage_error(tmp_path, capsys, no_sampling):
    err = _usage_error(capsys, _mcmc(tmp_path / "o", "--samplers", "PMM,LMC,PMM"))
    assert "argument --samplers" in err and "['PMM'] more than once" in err


# --------------------------------------------------------- a report that cannot be written
def _fail_writes_under(monkeypatch, root: Path) -> None:
    """Every report.md under ``root`` fails as on a full disk (after sampling)."""
    import errno
    import os

    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.is_relative_to(root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)


def _rescued(err: str) -> Path:
    match = re.search(r"saved in '([^']+)'", err)
    assert match, err
    return Path(match.group(1))


def test_mcmc_report_failure_keeps_the_traces(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    _fail_writes_under(monkeypatch, out)
    argv = _mcmc(out, "--draws", "20", "--tune", "20", "--chains", "1", "--samplers", "PMM")
    assert main([*argv, "--no-progress", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert f"could not write the report to {str(out)!r}" in err and "No space left" in err
    assert "Traceback" not in err
    rescued = _rescued(err)
    assert rescued.parent == tmp_path / "tmp"
    with xr.open_datatree(rescued / POSTERIOR / "PMM.nc") as dt:
        assert dt["posterior"].sizes["draw"] == 20
    assert (rescued / "report.md").is_file() and (rescued / "summary.csv").is_file()


def test_diffusion_report_error_keeps_the_results(tmp_path, capsys, monkeypatch):
    """A bug in a figure: the results are saved without figures, then the error is raised."""
    from pmm_pymc.compare import plots

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(*args, **kwargs):
        raise ValueError("a bug in the figure")

    monkeypatch.setattr(plots, "plot_metric_vs_nfe", broken)
    out = tmp_path / "out"
    argv = _diffusion(out, "--methods", "ddim", "--nfes", "5", "--seeds", "1", "--n-samples", "16")
    with pytest.raises(ValueError, match="a bug in the figure"):
        main([*argv, "--no-progress"])
    rescued = _rescued(capsys.readouterr().err)
    assert rescued.parent == tmp_path and rescued.name.startswith("pmm-compare-rescued-")
    assert set(pd.read_csv(rescued / "metrics.csv")["method"]) == {"ddim"}
    # one seed: no sd, said so (the table's sd column used to vanish and fail the report)
    assert "(one seed: no sd)" in (rescued / "report.md").read_text(encoding="utf-8")
    with xr.open_datatree(rescued / "results.nc") as results:
        assert results["runs"].sizes["seed"] == 1


# ------------------------------------------------------------------- without the torch extra
def test_diffusion_without_torch_names_the_extra(tmp_path):
    """torch blocked in a fresh interpreter: a usage error naming the extra, no traceback."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pmm_pymc.cli import main\n"
        f"sys.exit(main({_diffusion(tmp_path / 'o')!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 2, proc.stderr
    assert 'pip install "pmm-pymc[torch]"' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _files(tmp_path) == []


def test_report_and_rescue_both_failing(tmp_path, capsys, monkeypatch):
    """Nowhere to write: exit status 1, a message that says so, no empty rescue folders."""
    import errno

    from pmm_pymc.cli import _write_report

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def write(folder: Path, make_plots: bool) -> Path:
        raise OSError(errno.EROFS, "Read-only file system")

    assert _write_report(write, tmp_path / "out", make_plots=True) == 1
    err = capsys.readouterr().err
    assert "could not write the report" in err and "saving the results elsewhere failed too" in err
    assert _files(tmp_path) == []
