"""Benchmark: PMM against DDPM, DDIM and DPM-Solver++ on the digits64 mixture testbed.

The testbed (:func:`pmm_pymc.evaluation.testbeds.get_testbed`) is a 10-component,
full-covariance Gaussian mixture fitted to scikit-learn's 8x8 digits, whose
noise prediction is exact at every timestep; its component variances run from
0.01 to about 3.3, so it is stiff at the clean end. Every sampler uses the
1000-step linear schedule. Scores against exact samples of the target:

* MMD^2 (RBF, unbiased) at the median bandwidth and at a quarter of it,
* sliced 2-Wasserstein distance (128 fixed directions),
* the log-density gap ``E_q[log p] - E_p[log p]`` (negative: over-dispersed,
  positive: under-dispersed or mode-collapsed).

Each configuration runs with ``--seeds`` seeds (sampler seed and an
independent exact reference set per seed); the table gives mean ± standard
deviation over seeds. The "exact" row scores a second exact set: the floor.

Run::

    python benchmarks/bench_diffusion.py                 # a few minutes on 2 cores
    python benchmarks/bench_diffusion.py --n 300 --seeds 2 --quick
    python benchmarks/bench_diffusion.py --part network     # or testbed, overhead

It prints a markdown table, the variants at 80 NFE, the time spent outside the
network at 80 NFE, and writes a plot (``--plot``, default docs/bench_diffusion.png).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pmm_pymc.diffusion.sampler import pmm_blocks, sample
from pmm_pymc.diffusion.schedules import DDPMSchedule
from pmm_pymc.evaluation.metrics import log_density_gap, mmd_rbf, sliced_wasserstein
from pmm_pymc.evaluation.testbeds import get_testbed

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

NFES = (10, 20, 50, 80, 100, 200, 1000)
# K of the paper's scheme (uniform blocks on the 1000-step chain) closest to each NFE
UNIFORM_K = {10: 200, 20: 100, 50: 40, 80: 25, 100: 20, 200: 10}
METRICS = ("mmd", "mmd_fine", "sw", "logp_gap")


class TimedModel:
    """The exact ε of the testbed, with the time spent inside it accumulated."""

    def __init__(self, model):
        self.model = model
        self.seconds = 0.0

    def __call__(self, x, t):
        start = time.perf_counter()
        out = self.model(x, t)
        self.seconds += time.perf_counter() - start
        return out


def configurations(quick: bool) -> list[tuple[str, int, dict]]:
    """(method label, nominal NFE, sample() keyword arguments)."""
    nfes = (10, 20, 50, 80, 200, 1000) if quick else NFES
    out: list[tuple[str, int, dict]] = []
    for n in nfes:
        out.append(("ddpm", n, {"method": "ddpm", "steps": n}))
        if n <= 200:
            out.append(("ddim", n, {"method": "ddim", "steps": n}))
            out.append(("dpmsolver++", n, {"method": "dpmsolver++", "steps": n}))
            out.append(("pmm", n, {"method": "pmm", "nfe": n}))
            out.append(("pmm-uniform", n, {"method": "pmm", "K": UNIFORM_K[n]}))
    return out


def variants_at_80(schedule: DDPMSchedule) -> list[tuple[str, dict]]:
    """The block-layout and variance variants compared at about 80 NFE."""
    tail = 10
    head = pmm_blocks(1000 - tail, nfe=80 - tail, policy="uniform")
    return [
        ("uniform K=25, T=1000, beta_tilde (paper)", {"method": "pmm", "K": 25}),
        ("uniform K=25, T=1000, beta", {"method": "pmm", "K": 25, "variance": "beta"}),
        (
            "uniform K=25 + final denoising step",
            {"method": "pmm", "blocks": (25,) * 39 + (24, 1)},
        ),
        (
            f"uniform + last {tail} fine steps plain DDPM",
            {"method": "pmm", "blocks": head + (1,) * tail},
        ),
        ("stiffness blocks, T=1000 chain", {"method": "pmm", "nfe": 80, "steps": 1000}),
        ("stiffness blocks, 400-step chain (default)", {"method": "pmm", "nfe": 80}),
        ("default with variance beta", {"method": "pmm", "nfe": 80, "variance": "beta"}),
        ("stiffness blocks, 200-step chain", {"method": "pmm", "nfe": 80, "steps": 200}),
    ]


def score(testbed, x: torch.Tensor, ref: torch.Tensor, h: torch.Tensor) -> dict[str, float]:
    if not torch.isfinite(x).all():
        return dict.fromkeys(METRICS, math.inf)
    return {
        "mmd": float(mmd_rbf(x, ref, h)),
        "mmd_fine": float(mmd_rbf(x, ref, h, scale=0.25)),
        "sw": float(sliced_wasserstein(x, ref, 128, torch.Generator().manual_seed(0))),
        "logp_gap": float(log_density_gap(testbed, x, ref)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="samples per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip NFE 100 (and run fewer)")
    parser.add_argument("--plot", default="docs/bench_diffusion.png")
    parser.add_argument("--json", default="docs/results-diffusion.json")
    parser.add_argument("--network-n", type=int, default=1500, help="samples per network run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--replot", default=None, help="redraw the plot from a results JSON")
    parser.add_argument(
        "--network-nfes", type=int, nargs="+", default=[20, 50, 80], help="NFEs of the network part"
    )
    parser.add_argument(
        "--part",
        choices=("all", "testbed", "network", "overhead"),
        default="all",
        help="the exact testbed, the trained digits network, or both",
    )
    args = parser.parse_args()
    # One intra-op thread: on a small shared machine two OpenMP threads that
    # contend with other processes made every call 10-20x slower and the timings
    # meaningless; with one thread they are stable.
    torch.set_num_threads(args.threads)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot)
        return
    if args.part == "overhead":
        overhead_part(args)
        return
    if args.part in ("all", "network"):
        network_part(args)
    if args.part == "network":
        return

    schedule = DDPMSchedule.linear(1000)
    testbed = get_testbed("digits64")
    model = TimedModel(testbed.eps_model(schedule))
    d = testbed.dim
    refs = [
        testbed.sample(args.n, torch.Generator().manual_seed(1000 + s)) for s in range(args.seeds)
    ]
    # one kernel bandwidth for every score: the median heuristic of the exact samples
    h = torch.stack([torch.pdist(r).median() for r in refs]).mean()

    results: dict[str, dict] = {}

    def run(key: str, kwargs: dict) -> None:
        rows, nfes = [], []
        for s in range(args.seeds):
            out = sample(
                model,
                (args.n, d),
                schedule,
                generator=torch.Generator().manual_seed(s),
                **kwargs,
            )
            rows.append(score(testbed, out.samples, refs[s], h))
            nfes.append(float(out.nfe.double().mean()))
        results[key] = {
            "nfe": float(np.mean(nfes)),
            **{m: [r[m] for r in rows] for m in METRICS},
        }
        print(f"  {key:55s} nfe={np.mean(nfes):7.1f} " + fmt_row(results[key]), flush=True)

    started = time.perf_counter()
    exact = {m: [] for m in METRICS}
    for s in range(args.seeds):
        other = testbed.sample(args.n, torch.Generator().manual_seed(2000 + s))
        for m, v in score(testbed, other, refs[s], h).items():
            exact[m].append(v)
    results["exact"] = {"nfe": 0.0, **exact}
    print("exact vs exact:", fmt_row(results["exact"]))

    print("main grid:")
    for label, nfe, kwargs in configurations(args.quick):
        run(f"{label}@{nfe}", kwargs)
    print("variants at 80 NFE:")
    for label, kwargs in variants_at_80(schedule):
        run(f"variant: {label}", kwargs)

    print("time outside the network at 80 NFE (3 runs each, median):")
    overhead = {}
    for label, kwargs in (
        ("pmm", {"method": "pmm", "nfe": 80}),
        ("ddpm", {"method": "ddpm", "steps": 80}),
    ):
        fractions, walls = [], []
        for rep in range(3):
            model.seconds = 0.0
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(rep)
            sample(model, (args.n, d), schedule, generator=gen, **kwargs)
            walls.append(time.perf_counter() - start)
            fractions.append(1.0 - model.seconds / walls[-1])
        overhead[label] = {"wall_s": walls, "outside": fractions}
        print(
            f"  {label}: wall {np.median(walls):.2f}s, outside the network "
            f"{np.median(fractions):.1%} (runs: {', '.join(f'{f:.1%}' for f in fractions)})"
        )
    results["_overhead_80"] = overhead
    results["_settings"] = {"n": args.n, "seeds": args.seeds, "bandwidth": float(h)}
    print(f"total {time.perf_counter() - started:.0f}s")

    print()
    print(markdown_table(results))
    print()
    print(verdicts(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)


def overhead_part(args: argparse.Namespace) -> None:
    """Fraction of wall time spent outside the network at 80 NFE, for both models."""
    from pmm_pymc.evaluation.digits import load_eps_model

    schedule = DDPMSchedule.linear(1000)
    models = {"digits64 exact ε": TimedModel(get_testbed("digits64").eps_model(schedule))}
    try:
        models["digits ε-network (EpsMLP)"] = TimedModel(load_eps_model())
    except FileNotFoundError:
        pass
    print(f"time outside the network at 80 NFE, n={args.n} (5 runs each, median):")
    for name, model in models.items():
        for label, kwargs in (
            ("pmm", {"method": "pmm", "nfe": 80}),
            ("ddpm", {"method": "ddpm", "steps": 80}),
        ):
            fractions, walls, nets = [], [], []
            for rep in range(5):
                model.seconds = 0.0
                start = time.perf_counter()
                gen = torch.Generator().manual_seed(rep)
                sample(model, (args.n, 64), schedule, generator=gen, **kwargs)
                walls.append(time.perf_counter() - start)
                nets.append(model.seconds)
                fractions.append(1.0 - model.seconds / walls[-1])
            print(
                f"  {name:28s} {label:5s} wall {np.median(walls):6.2f}s, network "
                f"{np.median(nets):6.2f}s, outside {np.median(fractions):.1%} "
                f"(outside per run: {', '.join(f'{f:.0%}' for f in fractions)})"
            )


def network_part(args: argparse.Namespace) -> None:
    """The bundled digits ε-network (pmm_pymc.evaluation.digits), scored by a Fréchet distance.

    Samples are clipped to the pixel range [-1, 1] as images are. Features: the
    penultimate layer of the bundled digit classifier; reference: all 1797
    digits (the largest reference there is: with the 359 held-out digits
    alone, the seed-to-seed noise hid every difference between samplers). A
    sampler that matched the network's own distribution exactly would still
    score above zero (training error, finite samples); DDPM-1000 is the
    yardstick.
    """
    from pmm_pymc.evaluation.digits import digits_data, load_classifier, load_eps_model
    from pmm_pymc.evaluation.metrics import frechet_distance

    try:
        net, clf = load_eps_model(), load_classifier()
    except FileNotFoundError as err:
        print(f"network part skipped: {err}")
        return
    schedule = DDPMSchedule.linear(1000)
    with torch.no_grad():
        ref = clf.features(digits_data("all"))
        test_feat = clf.features(digits_data("test"))
        train_feat = clf.features(digits_data("train"))
    n = args.network_n
    print(f"digits network: Fréchet distance to all {ref.shape[0]} digits, {n} samples per run")
    print(f"  held-out vs training digits: {float(frechet_distance(test_feat, train_feat)):.3f}")
    configs = [("ddpm", 1000, {"method": "ddpm", "steps": 1000})]
    for k in args.network_nfes:
        configs += [
            ("ddpm", k, {"method": "ddpm", "steps": k}),
            ("ddim", k, {"method": "ddim", "steps": k}),
            ("dpmsolver++", k, {"method": "dpmsolver++", "steps": k}),
            ("pmm", k, {"method": "pmm", "nfe": k}),
        ]
    rows = {}
    for label, nfe, kwargs in configs:
        vals, nfes = [], []
        for seed in range(args.seeds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the PMM stiffness warning at 20
                out = sample(
                    net,
                    (args.n, 64),
                    schedule,
                    generator=torch.Generator().manual_seed(seed),
                    **kwargs,
                )
            x = out.samples
            ok = bool(torch.isfinite(x).all())
            with torch.no_grad():
                vals.append(
                    float(frechet_distance(clf.features(x.clamp(-1, 1)), ref)) if ok else math.inf
                )
            nfes.append(float(out.nfe.double().mean()))
        rows[f"{label}@{nfe}"] = {"nfe": float(np.mean(nfes)), "fd": vals}
        print(
            f"  {label + '@' + str(nfe):18s} nfe={np.mean(nfes):7.1f} Fréchet={fmt(vals, 1, 3)}",
            flush=True,
        )
    print()
    print("| sampler | NFE | Fréchet distance (classifier features) |")
    print("|---|---:|---:|")
    for key, r in rows.items():
        print(f"| {key} | {r['nfe']:.1f} | {fmt(r['fd'], 1, 3)} |")
    if args.json:
        Path(args.json).with_name("results-diffusion-network.json").write_text(
            json.dumps(rows, indent=1)
        )


def fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values) * scale
    if not np.all(np.isfinite(v)):
        return "diverged"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.{digits}f}"


def fmt_metric(metric: str, values: list[float]) -> str:
    if metric.startswith("mmd"):
        return fmt(values, 1e3) + " e-3"
    return fmt(values, 1, 3) if metric == "sw" else fmt(values)


def fmt_row(r: dict) -> str:
    return (
        f"mmd×1e3={fmt(r['mmd'], 1e3)} mmd_fine×1e3={fmt(r['mmd_fine'], 1e3)} "
        f"sw={fmt(r['sw'], 1, 3)} logp_gap={fmt(r['logp_gap'])}"
    )


def verdicts(results: dict, reference: str = "ddpm@1000") -> str:
    """The target, metric by metric: PMM at <= 80 NFE against DDPM-1000 and DDPM at its NFE.

    "Within noise" means the difference of the seed means is at most twice its
    standard error, sqrt((sd_a^2 + sd_b^2) / seeds), with the seed-to-seed sds.
    "Better" compares the MMD^2 and SW values (smaller is better) and the
    absolute log-density gap, and needs the difference to exceed two standard
    errors.
    """
    ref = results[reference]
    lines = [
        f"| PMM run | metric | PMM | {reference} | within noise of {reference}? "
        "| DDPM at the same NFE | better than it? |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for key in ("pmm@50", "pmm@80"):
        if key not in results:
            continue
        r, base = results[key], results.get("ddpm@" + key.split("@")[1])
        for m in METRICS:
            a, b = np.asarray(r[m]), np.asarray(ref[m])
            se = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / a.size)
            within = abs(a.mean() - b.mean()) <= 2 * se
            line = (
                f"| {key} | {m} | {fmt_metric(m, r[m])} | {fmt_metric(m, ref[m])} "
                f"| {'yes' if within else 'NO'} |"
            )
            if base is not None:
                c = np.asarray(base[m])
                se_c = math.sqrt((a.var(ddof=1) + c.var(ddof=1)) / a.size)
                if m == "logp_gap":
                    better = abs(c.mean()) - abs(a.mean()) > 2 * se_c
                else:  # unbiased MMD^2 and SW: smaller is better, signed
                    better = c.mean() - a.mean() > 2 * se_c
                line += f" {fmt_metric(m, base[m])} | {'yes' if better else 'no'} |"
            lines.append(line)
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    lines = [
        "| sampler | NFE | MMD² ×10³ (median bw) | MMD² ×10³ (bw/4) | sliced W2 "
        "| log-density gap |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, r in results.items():
        if key.startswith("_"):
            continue
        lines.append(
            f"| {key} | {r['nfe']:.1f} | {fmt(r['mmd'], 1e3)} | {fmt(r['mmd_fine'], 1e3)} | "
            f"{fmt(r['sw'], 1, 3)} | {fmt(r['logp_gap'])} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Metric against NFE, mean ± sd over seeds; off-scale (diverged) runs drawn at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = (
        ("mmd_fine", "MMD² at a quarter of the median bandwidth", (-0.5e-3, 4e-3), "linear"),
        ("sw", "sliced W2", (0.04, 0.3), "log"),
        ("logp_gap", "|log-density gap|", (0.1, 200), "log"),
    )
    styles = (
        ("ddpm", "o-"),
        ("ddim", "s-"),
        ("dpmsolver++", "^-"),
        ("pmm", "D-"),
        ("pmm-uniform", "v--"),
    )
    for ax, (metric, title, (lo, hi), yscale) in zip(axes, panels):
        for method, style in styles:
            pts = sorted(
                (r["nfe"], r[metric]) for k, r in results.items() if k.split("@")[0] == method
            )
            if not pts:
                continue
            nfe = np.array([p[0] for p in pts])
            vals = [np.asarray(p[1], dtype=float) for p in pts]
            if metric == "logp_gap":
                vals = [np.abs(v) for v in vals]
            mean = np.array([v.mean() for v in vals])
            sd = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in vals])
            off = ~np.isfinite(mean) | (mean > hi)
            line = ax.errorbar(
                nfe[~off], mean[~off], yerr=sd[~off], fmt=style, label=method, capsize=3, ms=4
            )
            if off.any():
                ax.plot(
                    nfe[off],
                    np.full(off.sum(), hi),
                    style[0],
                    color=line[0].get_color(),
                    mfc="none",
                )
        ref = results.get("ddpm@1000")
        if ref is not None:
            v = np.asarray(ref[metric], dtype=float)
            v = np.abs(v) if metric == "logp_gap" else v
            ax.axhspan(
                v.mean() - v.std(ddof=1),
                v.mean() + v.std(ddof=1),
                color="grey",
                alpha=0.25,
                label="DDPM-1000 ± sd",
            )
        ex = np.asarray(results["exact"][metric], dtype=float)
        ex = np.abs(ex) if metric == "logp_gap" else ex
        ax.axhline(ex.mean(), color="k", ls=":", lw=1, label="exact vs exact")
        ax.set_xscale("log")
        ax.set_yscale(yscale)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("network evaluations per sample")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "digits64 mixture testbed (exact ε), linear schedule T=1000; mean ± sd over seeds; "
        "hollow markers at the top: off scale (diverged)"
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
