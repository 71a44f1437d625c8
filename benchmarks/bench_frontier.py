"""The bias-versus-cost frontier of PMM, LMC and the randomized midpoint method (issue 8, item 1).

For each posterior, long runs of many chains (:func:`pmm_pymc.sample_chains`) *started at
reference draws* measure, per sampler setting, the worst |mean error| and the worst |sd error|
against the reference (in reference sd) and the gradient evaluations per effective sample:
one point of :func:`pmm_pymc.compare.frontier.frontier`. The settings:

* LMC and PMM K=4 adapted to ``target_accept`` 0.8, 0.9, 0.97 (hollow squares in the figures);
* fixed steps ``eta0 * FACTORS`` for LMC, PMM K=2, 4, 8 and the randomized midpoint method
  (RMM: Shen & Lee 2019, one midpoint at a uniform time per step, 2 gradients; the PMM
  transition with one firing per row, K=64 times), ``eta0`` being LMC's step at 0.9;
* NUTS (``pm.sample``, 4 chains) and nutpie (4 chains) as unbiased points.

Each run warms up ``--tune`` iterations from the reference draws (the preconditioner; the step
too for a ``target_accept`` point) and keeps ``--draws`` draws of ``--chains`` chains. The noise
floor of each point (:func:`pmm_pymc.compare.frontier.noise_floor`) is the 95 % quantile of the
worst error that the run's and the reference's Monte-Carlo errors alone would give; errors
below it are not claimed as biases. Per posterior, the cost each sampler needs to reach a bias
of 0.1, 0.05, 0.02, 0.01 sd (interpolated on its curve; :func:`cost_to_reach`) and the ratio
PMM/LMC.

Posteriors: the seven bundled ones (posteriordb references) and two higher-dimensional ones
built here with fixed seeds: ``hier_normal`` (a non-centred hierarchical normal model, 100
groups, 102 parameters) and ``logistic500`` (a Bayesian logistic regression, 500
coefficients, 1000 observations); their references are long nutpie runs generated on the fly
and cached under ``benchmarks/.frontier_cache/`` (not committed). Results go to
``docs/frontier/<posterior>.csv`` and ``.png``, and ``docs/frontier.md`` is rebuilt from every
CSV there, so posteriors can be run separately::

    python benchmarks/bench_frontier.py --posteriors kidscore_momiq low_dim_gauss_mix
    python benchmarks/bench_frontier.py                 # all of them
    python benchmarks/bench_frontier.py --quick         # a smoke run (few points, short runs)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from pmm_pymc.compare.frontier import (
    BIAS_LEVELS,
    FrontierSetting,
    cost_to_reach,
    frontier,
    nuts_point,
    where_pmm_wins,
)
from pmm_pymc.evaluation.posteriors import list_posteriors, load_model, load_reference
from pmm_pymc.mcmc.chains import reuse_compiled

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "frontier"
DOC = ROOT / "docs" / "frontier.md"
CACHE = Path(__file__).resolve().parent / ".frontier_cache"
FACTORS = (0.125, 0.25, 0.5, 1.0, 1.5)
TARGETS = (0.8, 0.9, 0.97)
BUILT = ("hier_normal", "logistic500")
# Per posterior run sizes: (chains, draws); the high-dimensional ones are costlier per draw.
SIZES = {
    "low_dim_gauss_mix": (64, 1000),
    "diamonds": (64, 1000),
    "hier_normal": (64, 1000),
    "logistic500": (32, 600),
}
DEFAULT_SIZE = (64, 2000)


# --- the two built posteriors -------------------------------------------------------------------


def hier_normal() -> pm.Model:
    """Non-centred hierarchical normal: 100 groups of 5 observations, 102 parameters."""
    rng = np.random.default_rng(20261202)
    J, n = 100, 5
    theta = 1.0 + 1.0 * rng.normal(size=J)
    y = theta[:, None] + 2.0 * rng.normal(size=(J, n))
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 5.0)
        tau = pm.HalfNormal("tau", 2.5)
        z = pm.Normal("z", 0.0, 1.0, shape=J)
        pm.Normal("y", (mu + tau * z)[:, None], 2.0, observed=y)
    return model


def logistic500() -> pm.Model:
    """Bayesian logistic regression: 500 coefficients (N(0, 1) prior), 1000 observations."""
    rng = np.random.default_rng(20261203)
    N, d = 1000, 500
    X = rng.normal(size=(N, d)) / np.sqrt(d)
    beta = rng.normal(size=d)
    y = (rng.uniform(size=N) < 1 / (1 + np.exp(-X @ beta))).astype(np.int64)
    with pm.Model() as model:
        b = pm.Normal("beta", 0.0, 1.0, shape=d)
        pm.Bernoulli("y", logit_p=pm.math.dot(X, b), observed=y)
    return model


def nutpie_reference(name: str, model: pm.Model) -> xr.DataTree:
    """A long nutpie run (8 chains x 5000 draws after 1000 tuning), cached."""
    path = CACHE / f"{name}.nc"
    if path.exists():
        return xr.open_datatree(path)
    import nutpie  # benchmark-only

    print(f"  reference: nutpie, 8 chains x 5000 draws (cached to {path})", flush=True)
    compiled = nutpie.compile_pymc_model(model)
    idata = nutpie.sample(
        compiled, chains=8, draws=5000, tune=1000, seed=7, progress_bar=False, cores=2
    )
    ref = xr.DataTree.from_dict({"posterior": idata["posterior"].to_dataset()})
    CACHE.mkdir(exist_ok=True)
    ref.to_netcdf(path)
    return ref


def load(name: str) -> tuple[pm.Model, xr.DataTree]:
    if name == "hier_normal":
        model = hier_normal()
        return model, nutpie_reference(name, model)
    if name == "logistic500":
        model = logistic500()
        return model, nutpie_reference(name, model)
    return load_model(name), load_reference(name)


# --- the unbiased points --------------------------------------------------------------------------


def nuts_points(model, reference, draws: int, seed: int) -> list[dict]:
    """NUTS (pm.sample) and nutpie (through pm.sample, when installed), 4 chains each."""
    rows = [nuts_point(model, reference, draws=draws, random_seed=seed)]
    try:
        import nutpie  # noqa: F401 - benchmark-only
    except ImportError:
        print("  nutpie is not installed: skipped")
        return rows
    rows.append(
        nuts_point(
            model, reference, draws=draws, random_seed=seed, sampler="nutpie", nuts_sampler="nutpie"
        )
    )
    return rows


# --- one posterior --------------------------------------------------------------------------------


def run_posterior(name: str, args: argparse.Namespace) -> pd.DataFrame:
    model, reference = load(name)
    chains, draws = SIZES.get(name, DEFAULT_SIZE)
    if args.chains:
        chains = args.chains
    if args.draws:
        draws = args.draws
    factors, targets = FACTORS, TARGETS
    if args.quick:
        chains, draws, factors, targets = 16, 200, (0.25, 1.0), (0.9,)
    # A reference without draws of every free variable (eight schools: the non-centred
    # offsets are not in posteriordb's reference) cannot give starts: those chains start
    # jittered and warm up longer.
    free = [rv.name for rv in model.free_RVs]
    ref_vars = reference["posterior"].to_dataset().data_vars
    start = "reference" if all(v in ref_vars for v in free) else "jitter"
    tune = args.tune if start == "reference" else max(args.tune, 1000)
    print(
        f"\n## {name}: {chains} chains x {draws} draws, warm-up {tune} from "
        f"{'reference draws' if start == 'reference' else 'jittered starts'}",
        flush=True,
    )
    common = {
        "chains": chains,
        "draws": draws,
        "tune": tune,
        "random_seed": 1,
        "start": start,
        "progress": lambda line: print(line, flush=True),
    }
    adapted = [
        FrontierSetting(sampler, method, K, target_accept=t)
        for sampler, method, K in (("LMC", "lmc", None), ("PMM K=4", "pmm", 4))
        for t in targets
    ]
    table = frontier(model, reference, adapted, **common)
    eta0 = float(table.query("sampler == 'LMC' and target_accept == 0.9")["step_size"].iloc[0])
    families = [
        ("LMC", "lmc", None),
        ("PMM K=2", "pmm", 2),
        ("PMM K=4", "pmm", 4),
        ("PMM K=8", "pmm", 8),
        ("RMM", "rmm", None),
    ]
    fixed = [
        FrontierSetting(sampler, method, K, step_size=round(eta0 * f, 4))
        for sampler, method, K in families
        for f in factors
    ]
    table = pd.concat([table, frontier(model, reference, fixed, **common)], ignore_index=True)
    if not args.no_nuts:
        print("  NUTS and nutpie", flush=True)
        table = pd.concat(
            [table, pd.DataFrame(nuts_points(model, reference, max(draws // 2, 500), 1))],
            ignore_index=True,
        )
    table.insert(0, "posterior", name)
    table["chains"], table["draws"], table["tune"], table["start"] = chains, draws, tune, start
    table["ref_size"] = reference["posterior"].sizes["chain"] * reference["posterior"].sizes["draw"]
    return table


# --- the document ---------------------------------------------------------------------------------


def _fmt(value: float, note: str) -> str:
    if note in ("not reached", "below floor"):
        return note
    return ("≤ " if note == "<=" else "") + f"{value:.1f}"


def _ratio_cell(row: pd.Series, base: pd.Series, lv: float) -> str:
    """The cost ratio of ``row``'s sampler to the baseline's at bias ``lv``, as text."""
    a, b = row[lv], base[lv]
    na, nb = row[f"note@{lv}"], base[f"note@{lv}"]
    if "below floor" in (na, nb) or (np.isnan(a) and np.isnan(b)):
        return "–"
    if np.isnan(b):
        return "LMC not reached"
    if np.isnan(a):
        return f"{row['sampler']} not reached"
    if na == nb == "<=":
        return "– (both ≤)"
    if na == "<=" or nb == "<=":  # an upper bound on one side
        return ("≤ " if na == "<=" else "≥ ") + f"{a / b:.2f}"
    return f"{a / b:.2f}"


def summary_markdown(tables: list[pd.DataFrame]) -> list[str]:
    """Per posterior and bias measure: the ratio PMM K=2, 4, 8 / LMC per level."""
    lines = [
        "## Summary: gradients per ESS of PMM over LMC's, at the same bias",
        "",
        "Below 1: PMM is cheaper. `–`: not resolved (under the noise floor, or neither",
        "reaches it); `– (both ≤)`: both are within the level at every measured step;",
        "`≤`/`≥`: one side is an upper bound. Per posterior, the sections below have the",
        "costs, RMM and NUTS.",
        "",
        "| posterior | bias | sampler | " + " | ".join(f"{lv:g} sd" for lv in BIAS_LEVELS) + " |",
        "|---|---|---|" + "---|" * len(BIAS_LEVELS),
    ]
    for table in tables:
        name = str(table["posterior"].iloc[0])
        for error, label in (("max_abs_mean_err", "mean"), ("max_abs_sd_err", "sd")):
            reach = cost_to_reach(table, BIAS_LEVELS, error).set_index("sampler", drop=False)
            for sampler in ("PMM K=2", "PMM K=4", "PMM K=8"):
                if sampler not in reach.index:
                    continue
                base = reach.loc["LMC"]
                cells = [_ratio_cell(reach.loc[sampler], base, lv) for lv in BIAS_LEVELS]
                lines.append(f"| {name} | {label} | {sampler} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def reach_markdown(table: pd.DataFrame) -> list[str]:
    lines = []
    for error, title in (
        ("max_abs_mean_err", "worst |mean error|"),
        ("max_abs_sd_err", "worst |sd error|"),
    ):
        reach = cost_to_reach(table, BIAS_LEVELS, error)
        lines.append(f"\nGradients per ESS to reach a {title} of:\n")
        lines.append("| sampler | " + " | ".join(f"{lv:g} sd" for lv in BIAS_LEVELS) + " |")
        lines.append("|---|" + "---|" * len(BIAS_LEVELS))
        base = reach.set_index("sampler").loc["LMC"]
        for _, row in reach.iterrows():
            cells = [_fmt(row[lv], row[f"note@{lv}"]) for lv in BIAS_LEVELS]
            lines.append(f"| {row['sampler']} | " + " | ".join(cells) + " |")
        for _, row in reach.iterrows():
            if not str(row["sampler"]).startswith(("PMM", "RMM")):
                continue
            cells = [_ratio_cell(row, base, lv) for lv in BIAS_LEVELS]
            lines.append(f"| ratio {row['sampler']}/LMC | " + " | ".join(cells) + " |")
        lines.append("\n" + where_pmm_wins(reach, error_name=title) + "\n")
    return lines


def write_doc() -> None:
    tables = sorted(OUT.glob("*.csv"))
    lines = [
        "# The bias-versus-cost frontier (issue 8, item 1)",
        "",
        "Generated by `python benchmarks/bench_frontier.py` (see its docstring); do not edit by",
        "hand: the script rebuilds this file from `docs/frontier/*.csv`.",
        "",
        "Each point is one long run of `sample_chains` started at reference draws: the worst",
        "|mean error| and worst |sd error| over every scalar (in reference sd, `reference_errors`)",
        "against gradient evaluations per effective sample (all gradients over the smallest",
        "bulk ESS, ArviZ). Fixed steps are `eta0 x (1/8, 1/4, 1/2, 1, 1.5)` with `eta0` LMC's",
        "step adapted to `target_accept=0.9`; hollow squares are `target_accept` 0.8, 0.9, 0.97.",
        "RMM is the randomized midpoint method (one midpoint at a uniform time of a 64-point",
        "grid, 2 gradients a step). NUTS (`pm.sample`) and nutpie are single, unbiased points.",
        "",
        "**Noise floor.** `floor` is the 95 % quantile of the worst error that Monte-Carlo noise",
        "alone gives (the run's MCSE and the reference's, combined per component, then the max",
        "over components): errors under it are not biases. With posteriordb's 10,000 reference",
        "draws the reference alone puts the floor of the worst mean error near 0.03 sd on a",
        "few-parameter posterior, so levels 0.02 and 0.01 are mostly `below floor`: the",
        "measurement cannot tell them, which is not the same as the sampler missing them.",
        "`≤ x`: every measured step is within the level (the cheapest is an upper bound).",
        "",
    ]
    frames = [pd.read_csv(path) for path in tables]
    done = {str(f["posterior"].iloc[0]) for f in frames}
    missing = [n for n in [*list_posteriors(), *BUILT] if n not in done]
    if missing:
        lines += [
            f"**Not measured yet:** {', '.join(missing)} (run "
            f"`python benchmarks/bench_frontier.py --posteriors {' '.join(missing)}`).",
            "",
        ]
    lines += summary_markdown(frames)
    for table in frames:
        name = str(table["posterior"].iloc[0])
        first = table.iloc[0]
        lines.append(f"## {name}\n")
        lines.append(
            f"Runs: {first['chains']} chains x {first['draws']} draws after {first['tune']} "
            f"warm-up iterations from "
            f"{'reference draws' if first['start'] == 'reference' else 'jittered starts'}; "
            f"reference: {first['ref_size']} draws. Run time {table['seconds'].sum() / 60:.0f} "
            "min on the shared 2-core machine (other agents' jobs running; load 6-9)."
        )
        lines.append(f"\n![frontier of {name}](frontier/{name}.png)\n")
        lines += reach_markdown(table)
        lines.append("<details><summary>all points</summary>\n")
        cols = [
            "sampler",
            "setting",
            "step_size",
            "grad_per_ess",
            "max_abs_mean_err",
            "mean_floor",
            "max_abs_sd_err",
            "sd_floor",
            "diverging",
            "seconds",
        ]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|---" * len(cols) + "|")
        for _, row in table.iterrows():
            cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("\n</details>\n")
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC}")


def _figure(table: pd.DataFrame, name: str) -> None:
    from pmm_pymc.compare.plots import plot_frontier

    try:
        plot_frontier(table, OUT / f"{name}.png", title=f"{name}: bias against cost")
    except ImportError:
        print("  matplotlib is not installed: no figure")


def main(argv: list[str] | None = None) -> None:
    names = [*list_posteriors(), *BUILT]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", nargs="*", default=names, choices=names)
    parser.add_argument("--chains", type=int, default=0, help="override the run size")
    parser.add_argument("--draws", type=int, default=0, help="override the run size")
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--no-nuts", action="store_true", help="skip NUTS and nutpie")
    parser.add_argument("--quick", action="store_true", help="a smoke run, not written to docs")
    parser.add_argument("--doc-only", action="store_true", help="rebuild docs/frontier.md")
    parser.add_argument(
        "--nuts-only", action="store_true", help="measure NUTS and nutpie again, keep the rest"
    )
    args = parser.parse_args(argv)
    if args.nuts_only:
        for name in args.posteriors:
            path = OUT / f"{name}.csv"
            if not path.exists():
                continue
            table = pd.read_csv(path)
            model, reference = load(name)
            print(f"## {name}: NUTS and nutpie again", flush=True)
            rows = pd.DataFrame(
                nuts_points(model, reference, max(int(table["draws"].iloc[0]) // 2, 500), 1)
            )
            for col in ("posterior", "chains", "draws", "tune", "start", "ref_size"):
                rows[col] = table[col].iloc[0]
            table = pd.concat(
                [table[~table["sampler"].isin(["NUTS", "nutpie"])], rows], ignore_index=True
            )
            table.to_csv(path, index=False)
            _figure(table, name)
    elif not args.doc_only:
        OUT.mkdir(parents=True, exist_ok=True)
        for name in args.posteriors:
            t0 = time.perf_counter()
            with reuse_compiled():  # one compilation per posterior
                table = run_posterior(name, args)
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
            for line in reach_markdown(table):
                print(line)
            if args.quick:
                continue
            table.to_csv(OUT / f"{name}.csv", index=False)
            _figure(table, name)
    if not args.quick:
        write_doc()


if __name__ == "__main__":
    main()
