"""Benchmark: PMM against DDPM, DDIM and DPM-Solver++ from 10 to 1000 network evaluations.

Every number comes from :func:`pmm_pymc.compare.compare_diffusion` (the library's one
definition of each metric, the same as ``pmm-compare diffusion``): per seed, ``--n`` samples
per sampler and NFE, scored against ``--n`` exact samples of that seed (a different set per
seed) with

* ``mmd``, ``mmd_fine``: unbiased RBF-MMD² at the median-heuristic bandwidth of the seed's
  exact samples and at 0.2 of it,
* ``sliced_w2``: sliced 2-Wasserstein distance (128 directions per seed),
* ``energy``: energy distance,
* ``log_density_gap``: ``E_q[log p] - E_p[log p]`` (negative: over-dispersed, positive:
  under-dispersed), on the exact testbeds,
* ``frechet`` (classifier features) and ``label_tv`` (total variation between the
  classifier-label frequencies of the samples and of the training digits), on the trained
  digits network.

Parts:

* ``testbeds``: the exact-score testbeds. digits64 (all samplers, NFE 10 ... 1000, plus the
  published noise-prediction PMM with and without its stability guard at NFE <= 80), and
  the two others at NFE 10 ... 200.
* ``network``: the bundled digits ε-network at NFE 10, 20, 30, 50, 80 (and DDPM-1000).
* ``overhead``: time outside the network at 80 NFE (see also bench_speed_diffusion.py).

Run::

    python benchmarks/bench_diffusion.py --n 500 --seeds 3          # about 10 min on 2 cores
    python benchmarks/bench_diffusion.py --part network --network-n 1000

It prints one markdown table per testbed, the PMM-against-DPM-Solver++ verdicts at 10, 20
and 30 NFE, writes the per-seed runs as JSON (``--json``) and one plot per testbed of each
metric against NFE (``--plots``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pmm_pymc.compare.diffusion import compare_diffusion
from pmm_pymc.compare.plots import plot_metric_vs_nfe
from pmm_pymc.diffusion.sampler import METHODS, sample
from pmm_pymc.diffusion.schedules import DDPMSchedule
from pmm_pymc.evaluation.testbeds import get_testbed

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
warnings.filterwarnings("ignore", message="PMM blocks reach stiffness")

LOW = (10, 15, 20, 30)
MID = (50, 80, 100, 200)
#: The published noise-prediction PMM (5 nfe-step chain, posterior variance), guarded and not.
EPS_VARIANTS = {
    "pmm-eps": {"method": "pmm", "parameterization": "eps"},
    "pmm-eps-noguard": {"method": "pmm", "parameterization": "eps", "max_gain": None},
}
SCALE = {"mmd": 1e3, "mmd_fine": 1e3, "energy": 1e3}
LABEL = {
    "mmd": "MMD² ×10³",
    "mmd_fine": "MMD² ×10³ (bw×0.2)",
    "sliced_w2": "sliced W2",
    "energy": "energy ×10³",
    "log_density_gap": "log-density gap",
    "frechet": "Fréchet",
    "label_tv": "label TV",
}


def run_testbed(name: str, nfes: dict, variants: dict, args: argparse.Namespace):
    started = time.perf_counter()
    result = compare_diffusion(
        name,
        list(METHODS),
        nfes,
        seeds=list(range(args.seeds)),
        n_samples=args.n,
        variants=variants,
    )
    print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return result


def fmt(mean: float, sd: float, metric: str) -> str:
    if not (math.isfinite(mean) and abs(mean) < 1e6):
        return "diverged"
    k = SCALE.get(metric, 1.0)
    digits = 3 if metric in ("sliced_w2", "label_tv", "frechet") else 2
    return f"{mean * k:.{digits}f} ± {sd * k:.{digits}f}"


def markdown(result) -> str:
    """One row per sampler and NFE, one column per metric (mean ± sd over seeds)."""
    table = result.table
    metrics = list(dict.fromkeys(table["metric"]))
    lines = [
        "| sampler | NFE | " + " | ".join(LABEL.get(m, m) for m in metrics) + " | fallbacks |",
        "|---|---:|" + "---:|" * len(metrics) + "---:|",
    ]
    floor = result.floor.set_index("metric")
    lines.append(
        "| exact (floor) | — | "
        + " | ".join(fmt(floor.loc[m, "mean"], floor.loc[m, "sd"], m) for m in metrics)
        + " | — |"
    )
    fallbacks = result.runs.groupby(["method", "target_nfe"])["fallbacks"].mean()
    wide = table.pivot_table(
        index=["target_nfe", "method"], columns="metric", values=["mean", "sd"], sort=False
    )
    nfe = table.groupby(["target_nfe", "method"], sort=False)["nfe"].first()
    for target, method in sorted(wide.index, key=lambda k: (k[0], list(nfe.index).index(k))):
        cells = [
            fmt(wide.loc[(target, method), ("mean", m)], wide.loc[(target, method), ("sd", m)], m)
            for m in metrics
        ]
        lines.append(
            f"| {method} | {nfe[(target, method)]:.1f} | "
            + " | ".join(cells)
            + f" | {fallbacks[(method, target)]:.2f} |"
        )
    return "\n".join(lines)


def verdicts(result, against: str = "dpmsolver++", nfes=(10, 20, 30)) -> str:
    """PMM against another sampler, metric by metric, at each NFE.

    "better": the seed-mean difference exceeds two standard errors
    ``sqrt((sd_a^2 + sd_b^2) / seeds)`` in PMM's favour (smaller MMD², W2, energy,
    Fréchet, label TV; smaller absolute log-density gap); "worse": the same against PMM;
    "tie": within two standard errors.
    """
    runs = result.runs
    metrics = [m for m in result.settings["metrics"]]
    lines = [
        f"| NFE | metric | pmm | {against} | verdict |",
        "|---:|---|---:|---:|---|",
    ]
    for n in nfes:
        a_rows = runs[(runs["method"] == "pmm") & (runs["target_nfe"] == n)]
        b_rows = runs[(runs["method"] == against) & (runs["target_nfe"] == n)]
        if a_rows.empty or b_rows.empty:
            continue
        for m in metrics:
            a, b = a_rows[m].to_numpy(), b_rows[m].to_numpy()
            if m == "log_density_gap":
                a, b = np.abs(a), np.abs(b)
            se = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / a.size) if a.size > 1 else 0.0
            diff = b.mean() - a.mean()
            verdict = "better" if diff > 2 * se else "worse" if diff < -2 * se else "tie"
            both_positive = a.mean() > 0 and b.mean() > 0
            ratio = f" ({a.mean() / b.mean():.1f}×)" if m == "mmd" and both_positive else ""
            lines.append(
                f"| {n} | {m} | {fmt(a_rows[m].mean(), a_rows[m].std(ddof=1), m)} | "
                f"{fmt(b_rows[m].mean(), b_rows[m].std(ddof=1), m)} | {verdict}{ratio} |"
            )
    return "\n".join(lines)


def report(result, args: argparse.Namespace, title: str) -> dict:
    print()
    print(f"### {result.testbed}")
    print(markdown(result))
    print()
    print(verdicts(result))
    print()
    if args.plots:
        table = result.table[~result.table["method"].str.endswith("noguard")]
        path = Path(args.plots) / f"bench_diffusion_{result.testbed}.png"
        plot_metric_vs_nfe(table, path, title=title, reference=result.floor)
        print(f"plot: {path}")
    return {
        "runs": result.runs.to_dict(orient="records"),
        "floor": result.floor_runs.to_dict(orient="records"),
        "settings": {k: str(v) for k, v in result.settings.items()},
    }


def overhead_part(args: argparse.Namespace) -> None:
    """Fraction of wall time spent outside the network at 80 NFE (exact digits64 model)."""
    schedule = DDPMSchedule.linear(1000)
    eps = get_testbed("digits64").eps_model(schedule)
    seconds = [0.0]

    def model(x, t):
        start = time.perf_counter()
        out = eps(x, t)
        seconds[0] += time.perf_counter() - start
        return out

    for label, kwargs in (("pmm", {"nfe": 80}), ("ddpm", {"steps": 80})):
        fractions = []
        for rep in range(3):
            seconds[0] = 0.0
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(rep)
            sample(model, (args.n, 64), schedule, label, generator=gen, **kwargs)
            fractions.append(1.0 - seconds[0] / (time.perf_counter() - start))
        print(f"  {label}: outside the network {np.median(fractions):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="samples per run (exact testbeds)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--network-n", type=int, default=1000, help="samples per network run")
    parser.add_argument("--plots", default="docs/results")
    parser.add_argument("--json", default="docs/results-diffusion.json")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--part", choices=("all", "testbeds", "network", "overhead"), default="all")
    args = parser.parse_args()
    # One intra-op thread: two OpenMP threads contending with other jobs on a small shared
    # machine made every call 10-20x slower.
    torch.set_num_threads(args.threads)
    if args.part == "overhead":
        overhead_part(args)
        return
    out: dict = {}
    if args.part in ("all", "testbeds"):
        full = {m: [*LOW, *MID, 1000] for m in METHODS}
        full |= {v: [*LOW, 50, 80] for v in EPS_VARIANTS}
        result = run_testbed("digits64", full, EPS_VARIANTS, args)
        out["digits64"] = report(result, args, "digits64 (exact ε): metric against NFE")
        for name in ("aniso64", "mixture2d"):
            grid = {m: [*LOW, *MID] for m in METHODS}
            result = run_testbed(name, grid, None, args)
            out[name] = report(result, args, f"{name} (exact ε): metric against NFE")
    if args.part in ("all", "network"):
        grid = {m: [10, 20, 30, 50, 80] for m in METHODS}
        grid["ddpm"] = [10, 20, 30, 50, 80, 1000]
        started = time.perf_counter()
        n_args = argparse.Namespace(**{**vars(args), "n": args.network_n})
        result = run_testbed("digits-net", grid, None, n_args)
        print(f"digits-net: {time.perf_counter() - started:.0f} s")
        out["digits-net"] = report(result, args, "trained digits ε-network: metric against NFE")
    if args.json:
        path = Path(args.json)
        previous = json.loads(path.read_text()) if path.exists() and args.part != "all" else {}
        if not isinstance(previous, dict) or "digits64" not in previous:
            previous = {}
        path.write_text(json.dumps(previous | out, indent=1, default=float))


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
