"""``pmm-compare``: compare PMM against LMC and NUTS from the shell, and write a report.

Three subcommands::

    pmm-compare mcmc --posterior NAME|all --out DIR [--draws N --chains C --seed S ...]
    pmm-compare diffusion --testbed NAME --out DIR [--device cuda ...]
    pmm-compare torch --target NAME|all --out DIR [--device cuda ...]

Each writes ``DIR/report.md`` (tables and the figures embedded), the PNG figures, CSV tables
and the DataTrees as netCDF. An existing non-empty ``DIR`` is refused unless ``--overwrite``
is given. All input is checked before any sampling starts, the output folder included (it
must be creatable and writable: :func:`_prepare_output`); a bad argument is a usage error
(exit status 2) that leaves nothing behind. If the report cannot be written after sampling,
the results are saved elsewhere and the error says where (exit status 1). Nothing in the
package imports this module.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pmm_pymc._validate import check_distinct, check_int

__all__ = ["main"]

_SAMPLERS = ("PMM", "LMC", "NUTS")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= minimum``, with an error that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        try:
            return check_int("the value", value, minimum)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


_positive_int = _int_at_least(1)
_sample_count = _int_at_least(2)
_non_negative_int = _int_at_least(0)


def _distinct(values: list, text: str) -> list:
    try:
        return check_distinct(repr(text), values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return _distinct(values, text)


def _run_spec(text: str) -> tuple[str, int]:
    method, sep, nfe = text.rpartition(":")
    try:
        value = int(nfe)
    except ValueError:
        value = 0
    if not sep or not method or value < 1:
        raise argparse.ArgumentTypeError(f"expected METHOD:NFE such as ddpm:1000, got {text!r}")
    return method, value


def _str_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return _distinct(values, text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmm-compare",
        description="Compare the Poisson Midpoint Method against Langevin Monte Carlo (and "
        "NUTS, and the diffusion baselines) and write a markdown report with figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    mcmc = sub.add_parser(
        "mcmc",
        help="PyMC samplers on the bundled posteriordb posteriors at equal gradient budget",
        description="Run PMM, LMC and NUTS on bundled posteriordb posteriors at the same "
        "number of gradient evaluations and compare them with the reference draws.",
    )
    mcmc.add_argument("--posterior", required=True, help="a bundled posterior, or 'all'")
    _add_budget_options(mcmc, draws=1000, chains=4, first="PMM")
    mcmc.add_argument(
        "--samplers",
        type=_str_list,
        default=list(_SAMPLERS),
        help="comma-separated subset of PMM,LMC,NUTS; the first sets the budget",
    )
    mcmc.add_argument("--K", type=_positive_int, default=None, help="PMM sub-steps K")
    mcmc.add_argument(
        "--max-treedepth",
        type=_positive_int,
        default=None,
        help="NUTS max_treedepth (default PyMC's, 10)",
    )
    _add_output_options(mcmc)

    diff = sub.add_parser(
        "diffusion",
        help="diffusion samplers on an exact-score testbed: metric against NFE",
        description="Sample a testbed with PMM, DDPM, DDIM and DPM-Solver++ at several "
        "network-evaluation budgets and compare with exact samples.",
    )
    diff.add_argument("--testbed", required=True, help="testbed name")
    diff.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    diff.add_argument(
        "--methods",
        type=_str_list,
        default=None,
        help="comma-separated subset of pmm,ddpm,ddim,dpmsolver++ (default all)",
    )
    diff.add_argument(
        "--nfes",
        type=_int_list,
        default=[10, 20, 50, 80, 100, 200, 1000],
        help="network-evaluation budgets per sample (default 10,20,50,80,100,200,1000)",
    )
    diff.add_argument(
        "--add",
        action="append",
        type=_run_spec,
        default=[],
        metavar="METHOD:NFE",
        help="an extra run beyond the --nfes grid, e.g. ddpm:1000 (repeatable)",
    )
    diff.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1 (default 3)")
    diff.add_argument(
        "--n-samples", type=_sample_count, default=2000, help="samples per run (default 2000)"
    )
    _add_output_options(diff)
    _add_torch_parser(sub)
    return parser


def _add_budget_options(
    parser: argparse.ArgumentParser, *, draws: int, chains: int, first: str
) -> None:
    """``--draws``, ``--tune``, ``--chains`` and ``--seed`` of the sampling subcommands."""
    parser.add_argument(
        "--draws",
        type=_positive_int,
        default=draws,
        help=f"draws per chain of {first}, which set the gradient budget of the others "
        f"(default {draws})",
    )
    parser.add_argument("--tune", type=_non_negative_int, default=1000, help="tuning steps")
    parser.add_argument(
        "--chains", type=_positive_int, default=chains, help=f"chains per sampler ({chains})"
    )
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, help="random seed, >= 0 (default 0)"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--overwrite``, ``--no-plots`` and ``--no-progress`` of every subcommand."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _names_or_all(
    parser: argparse.ArgumentParser, given: str, valid: Sequence[str], what: str
) -> list[str]:
    """``[given]``, or every valid name for ``"all"``; a usage error listing them otherwise."""
    if given == "all":
        return list(valid)
    if given not in valid:
        parser.error(f"unknown {what} {given!r}; valid: {', '.join(valid)}, or 'all'")
    return [given]


def _check_samplers(
    parser: argparse.ArgumentParser, samplers: Sequence[str], valid: Sequence[str]
) -> None:
    """A usage error for an unknown or repeated name in ``--samplers``."""
    unknown = [s for s in samplers if s not in valid]
    if unknown:
        parser.error(f"unknown sampler(s) {unknown}; valid: {', '.join(valid)}")
    if len(set(samplers)) != len(samplers):
        parser.error(f"--samplers lists a sampler twice: {samplers}")


def _prepare_output(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """Check ``--out`` (with ``--overwrite``) before any work; a usage error if it will not do.

    Every subcommand calls this after its other checks and before any sampling. The folder
    must be absent, empty or (with ``--overwrite``) a folder, creatable and writable (a probe
    file is written and removed), and a netCDF engine must be installed for the traces:
    :func:`pmm_pymc.compare.report.check_output_dir` and
    :func:`~pmm_pymc.compare.report.check_netcdf_engine`. Nothing is left on disk: the report
    writers create the folder.

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    from pmm_pymc.compare.report import check_netcdf_engine, check_output_dir

    try:
        check_netcdf_engine()
        return check_output_dir(args.out, overwrite=args.overwrite)
    except (OSError, ImportError) as err:
        parser.error(str(err))


def _write_report(write: Callable[..., Path], out: Path, *, make_plots: bool) -> int:
    """Write the report with ``write(folder, make_plots=...)``; if that fails, keep the results.

    Sampling is over by now, so a failure (a full disk, a folder removed or made read-only
    meanwhile, an error in a figure) must not lose its results: they are written again,
    without figures, to a new folder under the temporary directory (or the current one),
    and the error says where. An ``OSError`` then ends with exit status 1 and no traceback;
    any other error is raised again after the rescue.

    Returns
    -------
    int
        The exit status.
    """
    try:
        report = write(out, make_plots=make_plots)
    except Exception as err:
        rescued, failures = _rescue(write)
        if rescued is not None:
            fate = f"the results (traces and tables, no figures) are saved in {str(rescued)!r}"
        else:
            fate = "saving the results elsewhere failed too (" + "; ".join(failures) + ")"
        print(
            f"pmm-compare: error: could not write the report to {str(out)!r} "
            f"({type(err).__name__}: {err}); {fate}",
            file=sys.stderr,
        )
        if isinstance(err, OSError):
            return 1
        raise
    print(f"wrote {report}")
    return 0


def _rescue(write: Callable[..., Path]) -> tuple[Path | None, list[str]]:
    """Write the report without figures to a new folder; the folder, or why it failed."""
    failures = []
    for parent in (None, Path.cwd()):  # the temporary directory, then the current one
        try:
            folder = Path(tempfile.mkdtemp(prefix="pmm-compare-rescued-", dir=parent))
        except OSError as err:
            failures.append(f"{type(err).__name__}: {err}")
            continue
        try:
            write(folder, make_plots=False)
        except Exception as err:
            failure = f"{type(err).__name__}: {err}"
            if any(folder.iterdir()):
                failure += f"; what was written is in {str(folder)!r}"
            else:
                folder.rmdir()
            failures.append(failure)
            continue
        return folder, failures
    return None, failures


def _make_samplers(names: Sequence[str], K: int | None, max_treedepth: int | None) -> dict:
    import functools

    import pymc as pm

    from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint

    factories = {
        "PMM": functools.partial(PoissonMidpoint, K=K) if K is not None else PoissonMidpoint,
        "LMC": LangevinMC,
        "NUTS": (
            functools.partial(pm.NUTS, max_treedepth=max_treedepth)
            if max_treedepth is not None
            else pm.NUTS
        ),
    }
    return {name: factories[name] for name in names}


def _run_mcmc(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from pmm_pymc.evaluation.posteriors import list_posteriors

    names = _names_or_all(parser, args.posterior, list_posteriors(), "posterior")
    _check_samplers(parser, args.samplers, _SAMPLERS)
    out = _prepare_output(args, parser)

    from tqdm.auto import tqdm

    from pmm_pymc.compare.mcmc import compare_samplers
    from pmm_pymc.compare.report import write_mcmc_report
    from pmm_pymc.evaluation.posteriors import load_model, load_reference

    progress = not args.no_progress
    results = {}
    for name in tqdm(names, desc="posteriors", disable=not progress):
        results[name] = compare_samplers(
            load_model(name),
            _make_samplers(args.samplers, args.K, args.max_treedepth),
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            random_seed=args.seed,
            reference=load_reference(name),
            progressbar=progress,
        )
    write = functools.partial(
        write_mcmc_report,
        results,
        command=shlex.join(["pmm-compare", *argv]),
        progressbar=progress,
    )
    return _write_report(write, out, make_plots=not args.no_plots)


def _run_diffusion(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]
) -> int:
    try:
        from pmm_pymc.compare.diffusion import list_diffusion_testbeds
    except ModuleNotFoundError as err:  # torch is an extra; the message names it
        parser.error(str(err))
    from pmm_pymc.diffusion.sampler import METHODS

    valid = list_diffusion_testbeds()
    if args.testbed not in valid:
        parser.error(f"unknown testbed {args.testbed!r}; valid: {', '.join(valid)}")
    methods = list(METHODS) if args.methods is None else args.methods
    unknown = [m for m in [*methods, *(m for m, _ in args.add)] if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    grid = {m: list(args.nfes) for m in methods}
    for method, nfe in args.add:
        grid.setdefault(method, [])
        if nfe not in grid[method]:
            grid[method].append(nfe)
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"invalid --device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r} requested but CUDA is not available here")
    if device.type == "meta":
        parser.error("--device 'meta' holds no data; use cpu or cuda")
    try:
        torch.empty(1, device=device)
    except Exception as err:  # an absent backend raises RuntimeError, AssertionError, ...
        parser.error(f"--device {args.device!r} cannot hold a tensor here: {err}")
    out = _prepare_output(args, parser)

    from pmm_pymc.compare.diffusion import compare_diffusion
    from pmm_pymc.compare.report import write_diffusion_report

    result = compare_diffusion(
        args.testbed,
        list(grid),
        grid,
        seeds=list(range(args.seeds)),
        n_samples=args.n_samples,
        device=device,
        progressbar=not args.no_progress,
    )
    write = functools.partial(
        write_diffusion_report, result, command=shlex.join(["pmm-compare", *argv])
    )
    return _write_report(write, out, make_plots=not args.no_plots)


# ------------------------------------------------------------------------------ torch
_TORCH_SAMPLERS = ("PMM", "LMC", "LMC-half")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _add_torch_parser(sub: argparse._SubParsersAction) -> None:
    tp = sub.add_parser(
        "torch",
        help="PMM against LMC on bundled torch log-densities at equal gradient budget",
        description="Run PMM and LMC (at the same step and at half of it) with "
        "pmm_pymc.diffusion.sample_langevin on bundled torch targets with known answers, at "
        "the same number of gradient evaluations, and compare them with ArviZ against the "
        "exact moments or reference draws.",
    )
    tp.add_argument("--target", required=True, help="a bundled torch target, or 'all'")
    _add_budget_options(tp, draws=2000, chains=16, first="the first sampler")
    tp.add_argument(
        "--samplers",
        type=_str_list,
        default=list(_TORCH_SAMPLERS),
        help="comma-separated subset of PMM,LMC,LMC-half; the first sets the budget",
    )
    tp.add_argument(
        "--step-size",
        type=_positive_float,
        default=None,
        help="PMM's and LMC's step (default: the target's, 0.5 / its curvature bound)",
    )
    tp.add_argument("--K", type=_positive_int, default=8, help="PMM sub-steps K (default 8)")
    tp.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    tp.add_argument(
        "--score", action="store_true", help="use the closed-form score instead of autograd"
    )
    _add_output_options(tp)


_TORCH_INTRO = (
    "Each sampler is `pmm_pymc.diffusion.sample_langevin` on the target's torch log-density "
    "(gradients by autograd unless `--score`), with a fixed step: PMM with block step h and K "
    "sub-steps, LMC with step h, LMC-half with step h/2. After the tuning steps (discarded) "
    "every sampler gets the same number of gradient evaluations, read from each draw's "
    "`n_steps` (midpoints included; `budget_ratio` in `summary.csv` shows how close each "
    "came), and all start from the same overdispersed points (mean + 2 sd z). ESS, R-hat and "
    "MCSE are ArviZ's (arviz-stats). Errors are against the exact moments (gaussian, banana, "
    "mixture; W1 against 20000 exact draws) or the NUTS reference draws (logistic), in units "
    "of the reference sd: `mean err` and `sd err` are the largest absolute errors over the "
    "components, `mean W1` the mean 1-D Wasserstein distance of the marginals. Traces: "
    "`<target>/<sampler>.nc` (`xarray.open_datatree`)."
)


def _run_torch(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    try:
        from pmm_pymc.evaluation.torch_targets import get_target, list_targets
    except ModuleNotFoundError as err:  # torch is an extra
        parser.error(f"the torch comparison needs torch ({err}); pip install 'pmm-pymc[torch]'")
    names = _names_or_all(parser, args.target, list_targets(), "torch target")
    _check_samplers(parser, args.samplers, _TORCH_SAMPLERS)
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"invalid --device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device!r} requested but CUDA is not available here "
            "(no GPU, or a CPU-only torch); run with --device cpu"
        )
    targets = [get_target(name) for name in names]
    if args.score:
        closed = [t.name for t in targets if t.score is None]
        if closed:
            parser.error(f"--score: target(s) {closed} have no closed-form score")
    try:
        from pmm_pymc.compare.report import check_netcdf_engine, check_output_dir

        check_netcdf_engine()
        out = check_output_dir(args.out, overwrite=args.overwrite)
    except (FileExistsError, ModuleNotFoundError) as err:
        parser.error(str(err))

    from tqdm.auto import tqdm

    from pmm_pymc.compare.report import write_mcmc_report
    from pmm_pymc.compare.torch_langevin import compare_target, default_samplers

    progress = not args.no_progress
    results = {}
    for target in tqdm(targets, desc="targets", disable=not progress):
        step = args.step_size if args.step_size is not None else target.default_step_size()
        everything = default_samplers(step, K=args.K)
        results[target.name] = compare_target(
            target,
            {name: everything[name] for name in args.samplers},
            chains=args.chains,
            draws=args.draws,
            tune=args.tune,
            random_seed=args.seed,
            device=device,
            use_score=args.score,
            progressbar=progress,
        )
    report = write_mcmc_report(
        results,
        out,
        title="PMM against LMC on torch log-densities",
        command=shlex.join(["pmm-compare", *argv]),
        make_plots=not args.no_plots,
        progressbar=progress,
        intro=_TORCH_INTRO,
    )
    print(f"wrote {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pmm-compare``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 if the report could not be written (the results
        are then saved elsewhere, and the message says where). Usage errors exit with
        status 2 before any work.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "mcmc":
        return _run_mcmc(args, parser, argv)
    if args.command == "torch":
        return _run_torch(args, parser, argv)
    return _run_diffusion(args, parser, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
