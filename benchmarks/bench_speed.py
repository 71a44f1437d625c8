"""Speed of PMM and LMC on PyMC models (issue 5, items 1, 2 and 4).

Prints markdown tables:

1. ``overhead``: wall time per gradient evaluation of PoissonMidpoint and
   LangevinMC inside ``pm.sample`` (one chain, one core, the kept draws, timed
   with pm.sample's per-draw callback), beside the bare compiled logp+gradient
   call the step makes and beside NUTS's time per gradient (its ``n_steps``),
   all in one process on the same model.
2. ``throughput``: ``sample_chains`` with C = 256 chains against ``pm.sample``
   with the per-chain step on 2 cores and against nutpie on 2 cores, on a
   10-dimensional bimodal (non-log-concave) target: gradient evaluations per
   second (warm-up included, compilation excluded), bulk ESS per second, and
   the error of the posterior means and variances against the exact ones.
3. ``thinning``: wall time per gradient of PoissonMidpoint inside ``pm.sample`` at
   ``blocks_per_draw`` = 1, 4, 8 beside NUTS's, in one run on the same model: a
   10-parameter linear regression with 300 observations and the bundled
   ``kidscore_momiq`` posterior (issue 8, item 4).
4. ``scaling``: the cost of one ``sample_chains`` iteration and of the bare
   batched gradient call for d = 10, 100, 1000 and C = 1 ... 1024.

Every number is the median of ``--repeats`` runs (min and max beside it where
it matters). Run from the repository root::

    python benchmarks/bench_speed.py               # everything (~10 minutes on 2 cores)
    python benchmarks/bench_speed.py --quick       # a smoke run
    python benchmarks/bench_speed.py --sections overhead scaling

nutpie is installed into the running environment if it is missing (the
benchmark's own requirement, ``benchmarks/requirements.txt``; never a package
dependency). ``--no-install`` skips nutpie instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

from pmm_pymc.compare.diagnostics import ExactMoments, reference_errors, variable_diagnostics
from pmm_pymc.mcmc.chains import DEFAULT_K, BatchedLogpGrad, _run, sample_chains
from pmm_pymc.mcmc.kernel import LangevinState
from pmm_pymc.mcmc.steps import LangevinMC, PoissonMidpoint
from pmm_pymc.mcmc.warmup import Warmup

WEIGHTS = (0.3, 0.7)
SEPARATION = 1.5  # component means at -/+ 1.5 sd: each coordinate is bimodal


# ------------------------------------------------------------------------------------------------
# The target
# ------------------------------------------------------------------------------------------------


def mixture_model(d: int) -> tuple[pm.Model, np.ndarray, np.ndarray]:
    """A d-dimensional product of two-component normal mixtures (scales 0.5 .. 2).

    Each coordinate is 0.3 N(-1.5 s, s^2) + 0.7 N(1.5 s, s^2): bimodal, so the
    log density is not concave. Returns the model and the exact mean and
    variance of each coordinate.
    """
    sd = np.linspace(0.5, 2.0, d)
    w1, w2 = WEIGHTS
    with pm.Model() as model:
        pm.Mixture(
            "x",
            w=list(WEIGHTS),
            comp_dists=[
                pm.Normal.dist(-SEPARATION * sd, sd),
                pm.Normal.dist(SEPARATION * sd, sd),
            ],
            shape=d,
        )
    mean = (w2 - w1) * SEPARATION * sd
    var = sd**2 * (1 + SEPARATION**2) - mean**2
    return model, mean, var


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(x: float, digits: int = 3) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def per_call_seconds(fn: Callable[[], Any], min_time: float = 0.2) -> float:
    """Seconds per call of ``fn``: calls in a loop until ``min_time`` has passed."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n


def ess_bulk_min(posterior: np.ndarray) -> float:
    """Smallest bulk ESS over the coordinates of ``posterior`` (chain, draw, d)."""
    return float(variable_diagnostics(_dataset(posterior))["ess_bulk"].min())


def moment_errors(posterior: np.ndarray, mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """Largest |mean error| in posterior sds and largest |relative variance error|, from
    :func:`pmm_pymc.compare.diagnostics.reference_errors` against the exact moments."""
    exact = ExactMoments(
        xr.Dataset({"x": ("x_dim", np.asarray(mean))}),
        xr.Dataset({"x": ("x_dim", np.sqrt(var))}),
    )
    table = reference_errors(_dataset(posterior), exact)
    var_ratio = (1.0 + table["sd_err"].to_numpy()) ** 2
    return float(np.abs(table["mean_err"]).max()), float(np.max(np.abs(var_ratio - 1.0)))


def _dataset(posterior: np.ndarray) -> xr.Dataset:
    return xr.Dataset({"x": (("chain", "draw", "x_dim"), posterior)})


def run_nutpie(
    nutpie: Any, compiled: Any, tune: int, draws: int, seed: int, chains: int = 2
) -> tuple[Any, float]:
    """nutpie with ``chains`` chains on 2 cores, warm-up kept: its DataTree and wall seconds."""
    t0 = time.perf_counter()
    idata = nutpie.sample(
        compiled,
        chains=chains,
        cores=2,
        tune=tune,
        draws=draws,
        seed=seed,
        progress_bar=False,
        save_warmup=True,
    )
    return idata, time.perf_counter() - t0


def ensure_nutpie(install: bool) -> Any | None:
    """Import nutpie, pip-installing it into this environment first if allowed."""
    try:
        return importlib.import_module("nutpie")
    except ImportError:
        if not install:
            print("nutpie is not installed and --no-install was given: skipping nutpie.\n")
            return None
    print(
        "nutpie is not installed: installing it into this environment for the benchmark "
        "(pip install -r benchmarks/requirements.txt; it is not a pmm-pymc dependency) ...",
        flush=True,
    )
    req = os.path.join(os.path.dirname(__file__), "requirements.txt")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", req], check=False)
    if res.returncode != 0:
        print("pip could not install nutpie: skipping nutpie.\n")
        return None
    importlib.invalidate_caches()
    return importlib.import_module("nutpie")


# ------------------------------------------------------------------------------------------------
# 1. Overhead per gradient in pm.sample
# ------------------------------------------------------------------------------------------------


def _timed_pm_sample(model: pm.Model, step: Any, tune: int, draws: int, seed: int) -> float:
    """Seconds per gradient evaluation over the kept draws of one pm.sample chain."""
    stamps: dict[str, float] = {}
    n_steps: list[int] = []

    def callback(trace: Any, draw: Any) -> None:
        if not draw.tuning:
            if "first" not in stamps:
                stamps["first"] = time.perf_counter()
            else:  # the first kept draw's own cost is before its stamp
                st = draw.stats[0]
                n_steps.append(int(st["n_steps"] if "n_steps" in st else st["tree_size"]))
            stamps["last"] = time.perf_counter()

    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.sample(
            step=step,
            tune=tune,
            draws=draws,
            chains=1,
            cores=1,
            progressbar=False,
            compute_convergence_checks=False,
            random_seed=seed,
            callback=callback,
        )
    return (stamps["last"] - stamps["first"]) / sum(n_steps)


def _step_loop_seconds(step: Any, model: pm.Model, n: int, seed: int) -> float:
    """Seconds per gradient of ``step.step`` called in a bare loop (no trace, no pm.sample)."""
    step.setup_chain(np.random.default_rng(seed), 0, n)
    step.tune = False
    point = model.initial_point(seed)
    for _ in range(50):
        point, _ = step.step(point)
    total = 0
    t0 = time.perf_counter()
    for _ in range(n):
        point, stats = step.step(point)
        total += stats[0]["n_steps"]
    return (time.perf_counter() - t0) / total


def bench_overhead(dims: list[int], repeats: int, quick: bool) -> None:
    tune, draws = (100, 300) if quick else (500, 2000)
    print("## 1. Wall time per gradient evaluation in pm.sample (one chain, one core)\n")
    print(
        "Kept draws only (pm.sample's per-draw callback timestamps them), default "
        f"settings, tune={tune}, draws={draws}; median of {repeats} runs. `bare` is the "
        "compiled logp+gradient function the step calls, called in a loop at a typical point.\n"
    )
    print(
        "| d | bare call µs | PMM µs/grad | PMM / bare | PMM step loop µs/grad | "
        "LMC µs/grad | LMC / bare | NUTS µs/grad | PMM / NUTS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for d in dims:
        model, _, _ = mixture_model(d)
        rows: dict[str, list[float]] = {k: [] for k in ("bare", "pmm", "loop", "lmc", "nuts")}
        for r in range(repeats):
            with model:
                pmm = PoissonMidpoint()
                lmc = LangevinMC()
                nuts = pm.NUTS()
            rows["pmm"].append(_timed_pm_sample(model, pmm, tune, draws, seed=r))
            rows["lmc"].append(_timed_pm_sample(model, lmc, tune, draws, seed=r))
            rows["nuts"].append(_timed_pm_sample(model, nuts, tune, draws, seed=r))
            fn = pmm._logp_dlogp_func._pytensor_function
            x = np.asarray(pmm._x if pmm._x is not None else np.zeros(d))
            rows["bare"].append(per_call_seconds(lambda fn=fn, x=x: fn(x)))
            rows["loop"].append(_step_loop_seconds(pmm, model, draws, seed=r))
        med = {k: statistics.median(v) * 1e6 for k, v in rows.items()}
        print(
            f"| {d} | {fmt(med['bare'])} | {fmt(med['pmm'])} | {med['pmm'] / med['bare']:.2f} | "
            f"{fmt(med['loop'])} | {fmt(med['lmc'])} | {med['lmc'] / med['bare']:.2f} | "
            f"{fmt(med['nuts'])} | {med['pmm'] / med['nuts']:.2f} |"
        )
    print()
    _breakdown(dims, quick)


def _breakdown(dims: list[int], quick: bool) -> None:
    """Where one PoissonMidpoint draw's time goes: its parts timed alone (µs per draw)."""
    print("### Parts of one PoissonMidpoint draw, timed alone (µs)\n")
    print(
        f"K={DEFAULT_K}. `grads` is the compiled calls of an average draw (2 - 1/K of them); "
        "`noise` the K x d Gaussians and K - 1 uniforms; `pmm_step` the core update with one "
        "fired midpoint and a free drift; `accept` the MALA ratio the step computes each draw; "
        "`step loop` a whole `step.step` in a bare loop; `pm.sample` the same inside pm.sample "
        "(trace recording and the per-draw point function added).\n"
    )
    print("| d | grads | noise | pmm_step | accept | sum of parts | step loop | pm.sample |")
    print("|---|---|---|---|---|---|---|---|")
    for d in dims:
        print(_breakdown_row(d, quick))
    print()


def _breakdown_row(d: int, quick: bool) -> str:
    from pmm_pymc.core import langevin_chain, pmm_step
    from pmm_pymc.mcmc.kernel import Metric, log_accept_ratio

    t = 0.05 if quick else 0.3
    model, _, _ = mixture_model(d)
    with model:
        step = PoissonMidpoint()
    fn = step._logp_dlogp_func._pytensor_function
    rng = np.random.default_rng(0)
    x = np.zeros(d)
    K = DEFAULT_K
    chain = langevin_chain(0.1, K)
    fired: list = [None] * K
    fired[1] = np.zeros(1, dtype=np.intp)
    g = np.ones(d)
    ones = np.ones((K, 1, d))
    zero, metric = np.zeros(1), Metric.diag(g)
    parts = {
        "grads": (2 - 1 / K) * per_call_seconds(lambda: fn(x), t),
        "noise": per_call_seconds(lambda: (rng.standard_normal((K, 1, d)), rng.random(K - 1)), t),
        "pmm_step": per_call_seconds(
            lambda: pmm_step(lambda p, gr: p, x[None], g[None], ones, fired, chain), t
        ),
        "accept": per_call_seconds(
            lambda: log_accept_ratio(
                zero, zero + 0.1, x[None], x[None] + 0.1, g[None], g[None], 0.1, metric
            ),
            t,
        ),
    }
    loop = _step_loop_seconds(step, model, 500 if quick else 3000, seed=0) * (2 - 1 / K)
    with model:
        in_pm = _timed_pm_sample(model, PoissonMidpoint(), 100, 300 if quick else 2000, 0)
    in_pm *= 2 - 1 / K
    total = sum(parts.values())
    return (
        f"| {d} | "
        + " | ".join(fmt(v * 1e6) for v in parts.values())
        + f" | {fmt(total * 1e6)} | {fmt(loop * 1e6)} | {fmt(in_pm * 1e6)} |"
    )


# ------------------------------------------------------------------------------------------------
# 1b. Thinning: blocks_per_draw against pm.sample's per-draw cost
# ------------------------------------------------------------------------------------------------

THINNING_BLOCKS = (1, 4, 8)


def regression_model(n_obs: int = 300, n_coef: int = 8, seed: int = 0) -> pm.Model:
    """A linear regression with ``n_coef`` slopes, an intercept and a noise scale
    (``n_coef + 2`` parameters) on ``n_obs`` simulated observations."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_obs, n_coef))
    y = 1.0 + X @ rng.normal(size=n_coef) + rng.normal(scale=0.5, size=n_obs)
    with pm.Model() as model:
        alpha = pm.Normal("alpha", 0.0, 10.0)
        beta = pm.Normal("beta", 0.0, 10.0, shape=n_coef)
        sigma = pm.HalfNormal("sigma", 5.0)
        pm.Normal("y", alpha + pm.math.dot(X, beta), sigma, observed=y)
    return model


def bench_thinning(repeats: int, quick: bool) -> None:
    from pmm_pymc.evaluation.posteriors import load_model

    tune, draws = (100, 300) if quick else (500, 2000)
    print("## 1b. Thinning: PoissonMidpoint with several blocks per draw against NUTS\n")
    print(
        "Wall time per gradient evaluation of the kept draws in pm.sample (one chain, one "
        f"core, default settings otherwise), tune={tune}, kept draws={draws} / "
        "blocks_per_draw (so each run makes about the same number of gradients); median of "
        f"{repeats} runs, all configurations of a model in one process, interleaved. "
        "`PMM b=n / NUTS` is the target ratio (<= 1).\n"
    )
    header = ["model (d)", "bare call µs", "NUTS µs/grad"]
    header += [f"PMM b={b} µs/grad" for b in THINNING_BLOCKS]
    header += [f"PMM b={b} / NUTS" for b in THINNING_BLOCKS]
    header += [f"LMC b={b} µs/grad" for b in (1, THINNING_BLOCKS[-1])]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    models = {
        "regression, 300 obs": regression_model(),
        "kidscore_momiq": load_model("kidscore_momiq"),
    }
    for label, model in models.items():
        rows: dict[str, list[float]] = {}
        for r in range(repeats):
            with model:
                nuts = pm.NUTS()
            rows.setdefault("nuts", []).append(_timed_pm_sample(model, nuts, tune, draws, r))
            for b in THINNING_BLOCKS:
                with model:
                    pmm = PoissonMidpoint(blocks_per_draw=b)
                n_kept = max(draws // b, 100)
                rows.setdefault(f"pmm{b}", []).append(_timed_pm_sample(model, pmm, tune, n_kept, r))
            for b in (1, THINNING_BLOCKS[-1]):
                with model:
                    lmc = LangevinMC(blocks_per_draw=b)
                n_kept = max(draws // b, 100)
                rows.setdefault(f"lmc{b}", []).append(_timed_pm_sample(model, lmc, tune, n_kept, r))
            fn = pmm._logp_dlogp_func._pytensor_function
            x = np.asarray(pmm._x)
            rows.setdefault("bare", []).append(per_call_seconds(lambda fn=fn, x=x: fn(x)))
            print(f"  ({label}: repeat {r + 1} of {repeats} done)", flush=True)
        med = {k: statistics.median(v) * 1e6 for k, v in rows.items()}
        cells = [f"{label} ({pmm._n_dim})", fmt(med["bare"]), fmt(med["nuts"])]
        cells += [fmt(med[f"pmm{b}"]) for b in THINNING_BLOCKS]
        cells += [f"{med[f'pmm{b}'] / med['nuts']:.2f}" for b in THINNING_BLOCKS]
        cells += [fmt(med[f"lmc{b}"]) for b in (1, THINNING_BLOCKS[-1])]
        print("| " + " | ".join(cells) + " |")
    print()


# ------------------------------------------------------------------------------------------------
# 2. Throughput: many chains against pm.sample and nutpie on 2 cores
# ------------------------------------------------------------------------------------------------


def _row(name: str, grads: float, seconds: list[float], post: np.ndarray, mean, var) -> str:
    t, tmin, tmax = median_min_max(seconds)
    ess = ess_bulk_min(post)
    e_mean, e_var = moment_errors(post, mean, var)
    return (
        f"| {name} | {fmt(grads / t)} | {fmt(t)} ({fmt(tmin)}–{fmt(tmax)}) | {fmt(ess)} | "
        f"{fmt(ess / t)} | {e_mean:.3f} | {e_var:.3f} |"
    )


def _n_steps_all(idata: Any) -> float:
    total = float(idata.sample_stats["n_steps"].values.sum())
    if "warmup_sample_stats" in idata.children:
        total += float(idata.warmup_sample_stats["n_steps"].values.sum())
    return total


def bench_throughput(repeats: int, quick: bool, install: bool, chains: int = 256) -> None:
    d = 10
    tune, draws = (200, 200) if quick else (1000, 1000)
    model, mean, var = mixture_model(d)
    print(f"## 2. Many chains at once: {d}-d bimodal mixture, tune={tune}, draws={draws}\n")
    print(
        "Gradient evaluations per second over warm-up and sampling (compilation excluded), "
        "the smallest bulk ESS over the coordinates per second of the same run, and the "
        "largest error of the posterior means (in posterior sds) and variances (relative) "
        f"against the exact ones. Median of {repeats} runs (range in brackets).\n"
    )
    print("| sampler | grad evals / s | seconds | min bulk ESS | ESS / s | mean err | var err |")
    print("|---|---|---|---|---|---|---|")
    results: dict[str, float] = {}
    cores = min(4, os.cpu_count() or 1)
    for method, target, n_cores in (
        ("pmm", None, 1),
        ("pmm", None, cores),
        ("lmc", None, cores),
        ("pmm", 0.7, cores),
    ):
        secs, grads, post = [], 0.0, None
        for r in range(repeats):
            idata = sample_chains(
                model,
                chains=chains,
                tune=tune,
                draws=draws,
                method=method,
                target_accept=target,
                random_seed=r,
                discard_tuned_samples=False,
                cores=n_cores,
            )
            secs.append(float(idata.posterior.attrs["sampling_time"]))
            grads = _n_steps_all(idata)
            post = idata.posterior["x"].values
            eta = float(idata.sample_stats["step_size"].values[0, 0])
        extra = "" if target is None else f", target_accept={target}"
        name = f"sample_chains {method.upper()} C={chains}{extra}, cores={n_cores} (step {eta:.3g})"
        print(_row(name, grads, secs, post, mean, var))
        if target is None:
            results[f"sample_chains_{method}_{n_cores}"] = grads / statistics.median(secs)

    steady: dict[str, float] = {}
    for label, make_step in (
        (f"pm.sample PoissonMidpoint(K={DEFAULT_K}), 2 chains, cores=2", PoissonMidpoint),
        ("pm.sample LangevinMC, 2 chains, cores=2", LangevinMC),
        ("pm.sample NUTS, 2 chains, cores=2", pm.NUTS),
    ):
        secs, grads, post, rates = [], 0.0, None, []
        for r in range(repeats):
            # Steady state: the draws that reach the main process after the first one, over
            # the time between the first and the last (process start-up excluded).
            seen: dict[str, float] = {"n": 0.0}

            def callback(trace: Any, draw: Any, seen: dict = seen) -> None:
                now = time.perf_counter()
                if "t0" not in seen:
                    seen["t0"] = now
                    return
                st = draw.stats[0]
                seen["n"] += float(st["n_steps"] if "n_steps" in st else st["tree_size"])
                seen["t1"] = now

            with model, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                idata = pm.sample(
                    step=make_step(),
                    tune=tune,
                    draws=draws,
                    chains=2,
                    cores=2,
                    progressbar=False,
                    compute_convergence_checks=False,
                    discard_tuned_samples=False,
                    random_seed=r,
                    callback=callback,
                )
            secs.append(float(idata.posterior.attrs["sampling_time"]))
            rates.append(seen["n"] / (seen["t1"] - seen["t0"]))
            grads = _n_steps_all(idata)
            post = idata.posterior["x"].values
        print(_row(label, grads, secs, post, mean, var))
        results[label] = grads / statistics.median(secs)
        steady[label] = statistics.median(rates)

    nutpie = ensure_nutpie(install)
    if nutpie is not None:
        compiled = nutpie.compile_pymc_model(model)
        secs, grads, post = [], 0.0, None
        for r in range(repeats):
            idata, seconds = run_nutpie(nutpie, compiled, tune, draws, r)
            secs.append(seconds)
            grads = _n_steps_all(idata)
            post = idata.posterior["x"].values
        label = f"nutpie {nutpie.__version__} (numba), 2 chains, cores=2"
        print(_row(label, grads, secs, post, mean, var))
        results["nutpie"] = grads / statistics.median(secs)
    print()
    print(
        "pm.sample's `seconds` is its `sampling_time` (it includes starting the worker "
        "processes). Steady-state gradient evaluations per second of pm.sample, from the "
        "draws arriving after the first one (start-up excluded):\n"
    )
    for label, rate in steady.items():
        print(f"- {label}: {fmt(rate)} grad evals / s")
    print()
    key = f"pm.sample PoissonMidpoint(K={DEFAULT_K}), 2 chains, cores=2"
    for n_cores in sorted({1, cores}):
        ours = results[f"sample_chains_pmm_{n_cores}"]
        print(
            f"- sample_chains PMM (cores={n_cores}) / pm.sample PoissonMidpoint, grad evals per "
            f"second: {ours / results[key]:.1f}x whole run, {ours / steady[key]:.1f}x against "
            "pm.sample's steady state (target >= 10x)"
        )
        if "nutpie" in results:
            print(
                f"- sample_chains PMM (cores={n_cores}) / nutpie, grad evals per second: "
                f"{ours / results['nutpie']:.2f}x (target > 1)"
            )
    print()


# ------------------------------------------------------------------------------------------------
# 3. Scaling with dimension and chains
# ------------------------------------------------------------------------------------------------


def bench_scaling(dims: list[int], chain_counts: list[int], repeats: int, quick: bool) -> None:
    print("## 3. Scaling of sample_chains with dimension and chains (PMM, K=4)\n")
    print(
        "Fixed step size 0.05 (no adaptation, no preconditioner), the draws kept in memory "
        "as sample_chains does, one thread (its default `cores=1`). `call` is one batched "
        "logp+gradient call at C points; "
        "`iteration` one PMM draw of all C chains (about two calls plus the update); "
        f"median of {repeats} runs.\n"
    )
    print(
        "| d | C | call µs | call µs / chain | iteration µs | iteration / (2 calls) | "
        "grad evals / s |"
    )
    print("|---|---|---|---|---|---|---|")
    for d in dims:
        model, _, _ = mixture_model(d)
        point = model.initial_point(0)
        f = BatchedLogpGrad(model, model.continuous_value_vars, point)  # one thread, the default
        for C in chain_counts:
            rng = np.random.default_rng(0)
            x0 = rng.normal(size=(C, d))
            call = statistics.median(
                [
                    per_call_seconds(lambda f=f, x0=x0: f(x0), 0.05 if quick else 0.2)
                    for _ in range(repeats)
                ]
            )
            iters = max(5, min(200, int(0.5 / max(2.5 * call, 1e-6))))
            if quick:
                iters = max(3, iters // 10)
            iters = min(iters, max(3, int(2e8 / (8 * C * d))))  # keep the stored draws small
            per_iter, gps = [], []
            for r in range(repeats):
                logp, grad = f(x0)
                t0 = time.perf_counter()
                warmup = Warmup(
                    d, step_size=0.05, adapt_step_size=False, target_accept=0.9, precondition=None
                )
                out = _run(
                    f,
                    LangevinState(x0.copy(), logp, grad),
                    warmup,
                    np.random.default_rng(r),
                    draws=iters,
                    tune=0,
                    K=DEFAULT_K,
                    max_energy_error=1000.0,
                    keep_tune=False,
                    progress=False,
                )
                elapsed = time.perf_counter() - t0
                per_iter.append(elapsed / iters)
                gps.append(out.stats["n_steps"].sum() / elapsed)
            it = statistics.median(per_iter)
            print(
                f"| {d} | {C} | {fmt(call * 1e6)} | {fmt(call * 1e6 / C)} | {fmt(it * 1e6)} | "
                f"{it / (2 * call):.2f} | {fmt(statistics.median(gps))} |"
            )
        f.close()
    print()


def bench_backends(repeats: int, quick: bool) -> None:
    print("## 4. PyTensor backend of the batched call (sample_chains' `backend=`)\n")
    print(
        "Compile time of the batched logp+gradient function and time per call, 10-d mixture; "
        f"median of {repeats} timings.\n"
    )
    print("| backend | compile s | C=1 call µs | C=256 call µs | C=256 µs / chain |")
    print("|---|---|---|---|---|")
    model, _, _ = mixture_model(10)
    point = model.initial_point(0)
    import pmm_pymc.mcmc.chains as chains_module

    rewrite = chains_module._unblock_logsumexp
    for backend, mode, unblock in (
        ("numba", "NUMBA", True),
        ("numba, without the LogSumExp rewrite", "NUMBA", False),
        ("c", "CVM", True),
    ):
        chains_module._unblock_logsumexp = rewrite if unblock else (lambda outs: outs)
        t0 = time.perf_counter()
        try:
            f = BatchedLogpGrad(model, model.continuous_value_vars, point, mode=mode)
        finally:
            chains_module._unblock_logsumexp = rewrite
        compile_s = time.perf_counter() - t0
        row = []
        for C in (1, 256):
            x0 = np.random.default_rng(0).normal(size=(C, 10))
            row.append(
                statistics.median(
                    per_call_seconds(lambda f=f, x0=x0: f(x0), 0.05 if quick else 0.3)
                    for _ in range(repeats)
                )
            )
        print(
            f"| {backend} | {compile_s:.1f} | {fmt(row[0] * 1e6)} | {fmt(row[1] * 1e6)} | "
            f"{fmt(row[1] * 1e6 / 256)} |"
        )
    print()


def bench_threads(repeats: int, quick: bool) -> None:
    cores = min(4, os.cpu_count() or 1)
    print(f"## 5. Splitting a batched call over threads (sample_chains' `cores`, here {cores})\n")
    print(
        "One batched logp+gradient call of the d-dimensional mixture at C points, on one thread "
        f"and split over {cores} (each part by its own copy of the compiled function; the "
        f"numba kernels release the GIL); median of {repeats} timings.\n"
    )
    print(f"| d | C | 1 thread ms | {cores} threads ms | speed-up |")
    print("|---|---|---|---|---|")
    cases = [(100, 256)] if quick else [(10, 1024), (100, 1024), (1000, 256), (1000, 1024)]
    for d, C in cases:
        model, _, _ = mixture_model(d)
        x0 = np.random.default_rng(0).normal(size=(C, d))
        fs = {
            t: BatchedLogpGrad(
                model, model.continuous_value_vars, model.initial_point(0), threads=t
            )
            for t in sorted({1, cores})
        }
        for f in fs.values():  # first calls: thread start-up, the copies' first runs
            for _ in range(5):
                f(x0)
        times: dict[int, list[float]] = {t: [] for t in fs}
        for _ in range(repeats):
            for t, f in fs.items():
                times[t].append(per_call_seconds(lambda f=f, x0=x0: f(x0), 0.05 if quick else 0.3))
        one, many = statistics.median(times[1]), statistics.median(times[cores])
        print(f"| {d} | {C} | {one * 1e3:.2f} | {many * 1e3:.2f} | {one / many:.2f} |")
        for f in fs.values():
            f.close()
    print()


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["overhead", "thinning", "throughput", "scaling", "backends", "threads"],
        choices=["overhead", "thinning", "throughput", "scaling", "backends", "threads"],
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--no-install", action="store_true", help="skip nutpie if missing")
    parser.add_argument("--chains", type=int, default=256)
    args = parser.parse_args(argv)

    import logging

    import pytensor

    logging.getLogger("pymc").setLevel(logging.ERROR)
    print("# bench_speed\n")
    print(
        f"python {platform.python_version()}, pymc {pm.__version__}, pytensor "
        f"{pytensor.__version__}, numpy {np.__version__}; {os.cpu_count()} CPUs; "
        f"load average at start {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )
    t0 = time.perf_counter()
    if "overhead" in args.sections:
        bench_overhead([10] if args.quick else [10, 1000], args.repeats, args.quick)
    if "thinning" in args.sections:
        bench_thinning(args.repeats, args.quick)
    if "throughput" in args.sections:
        bench_throughput(args.repeats, args.quick, not args.no_install, args.chains)
    if "scaling" in args.sections:
        chain_counts = [1, 16, 256] if args.quick else [1, 4, 16, 64, 256, 1024]
        bench_scaling(
            [10, 100] if args.quick else [10, 100, 1000], chain_counts, args.repeats, args.quick
        )
    if "backends" in args.sections:
        bench_backends(args.repeats, args.quick)
    if "threads" in args.sections:
        bench_threads(args.repeats, args.quick)
    print(
        f"(bench_speed took {time.perf_counter() - t0:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
