"""Cost on real models: sample_chains against pm.sample and nutpie (issue 11, item 5).

On data-heavy posteriors, where each gradient is real work (the bundled ``diamonds``,
``blr`` and ``kidscore_momiq``, and a 10-parameter Student-t regression with 1,000
observations), prints for each sampler

* **steady state**: gradient evaluations per second and the smallest bulk ESS per second
  of the sampling run (warm-up and sampling, compilation excluded: the second run in the
  same process, with every cache warm);
* **first run**: the wall time of the whole first call in a fresh process with an empty
  PyTensor compile cache (a fresh install), compilation included, measured apart;
* **profile** of ``sample_chains``: the share of its sampling time spent inside the
  batched compiled logp+gradient call, the rest being the per-iteration numpy work
  around it (the transition's arithmetic, random numbers, the warm-up).

Samplers: ``sample_chains`` (PMM, ``--chains`` chains, one core), ``pm.sample`` with
``PoissonMidpoint`` (2 chains, ``cores=2``) and nutpie (2 chains, ``cores=2``; a
benchmark-only requirement, installed into the running environment when missing unless
``--no-install``). ESS comes from ArviZ through ``pmm_pymc.compare.diagnostics`` (the
library's one definition). Run from the repository root::

    python benchmarks/bench_real_models.py            # ~15 minutes on 2 cores
    python benchmarks/bench_real_models.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import ensure_nutpie, fmt, run_nutpie  # noqa: E402

from pmm_pymc.compare.diagnostics import gradient_evaluations, variable_diagnostics  # noqa: E402
from pmm_pymc.evaluation.posteriors import load_model  # noqa: E402
from pmm_pymc.mcmc import chains as chains_module  # noqa: E402
from pmm_pymc.mcmc.chains import sample_chains  # noqa: E402
from pmm_pymc.mcmc.steps import PoissonMidpoint  # noqa: E402

MODELS = ("diamonds", "blr", "kidscore_momiq", "student_t_1000")


def student_t_regression(n: int = 1000, k: int = 8, seed: int = 0) -> pm.Model:
    """y ~ StudentT(4, a + X b, s): 10 parameters (a, b[8], s), ``n`` observations."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, k))
    y = 0.5 + X @ rng.normal(0, 1, k) + 0.7 * rng.standard_t(4, n)
    with pm.Model() as model:
        a = pm.Normal("a", 0, 5)
        b = pm.Normal("b", 0, 2, shape=k)
        s = pm.HalfNormal("s", 2)
        pm.StudentT("y", nu=4, mu=a + pm.math.dot(X, b), sigma=s, observed=y)
    return model


def get_model(name: str) -> pm.Model:
    return student_t_regression() if name == "student_t_1000" else load_model(name)


def _sampling_seconds(idata: Any) -> float:
    return float(idata["posterior"].attrs["sampling_time"])


def _all_gradients(idata: Any) -> float:
    total = float(gradient_evaluations(idata["sample_stats"].to_dataset()).sum())
    if "warmup_sample_stats" in idata.children:
        total += float(gradient_evaluations(idata["warmup_sample_stats"].to_dataset()).sum())
    return total


def _min_ess(idata: Any) -> float:
    return float(variable_diagnostics(idata["posterior"].to_dataset())["ess_bulk"].min())


def run_sampler(sampler: str, name: str, chains: int, tune: int, draws: int, seed: int) -> dict:
    """One run; returns gradients, seconds (sampling), min bulk ESS and, for sample_chains,
    the seconds inside the batched call."""
    model = get_model(name)
    inside = [0.0]
    if sampler == "sample_chains":
        call = chains_module.BatchedLogpGrad.__call__

        def timed(self, points):  # the profile: time inside the compiled batched call
            t0 = time.perf_counter()
            try:
                return call(self, points)
            finally:
                inside[0] += time.perf_counter() - t0

        chains_module.BatchedLogpGrad.__call__ = timed
        try:
            idata = sample_chains(
                model,
                chains=chains,
                tune=tune,
                draws=draws,
                random_seed=seed,
                discard_tuned_samples=False,
                compute_convergence_checks=False,
            )
        finally:
            chains_module.BatchedLogpGrad.__call__ = call
        seconds = _sampling_seconds(idata)
    elif sampler == "pm.sample":
        with model, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = pm.sample(
                step=PoissonMidpoint(),
                chains=2,
                cores=2,
                tune=tune,
                draws=draws,
                random_seed=seed,
                progressbar=False,
                compute_convergence_checks=False,
                discard_tuned_samples=False,
            )
        seconds = _sampling_seconds(idata)
    else:
        nutpie = ensure_nutpie(install=False)
        idata, seconds = run_nutpie(nutpie, nutpie.compile_pymc_model(model), tune, draws, seed)
    return {
        "grads": _all_gradients(idata),
        "seconds": seconds,
        "ess": _min_ess(idata),
        "inside": inside[0],
    }


def first_run(sampler: str, name: str, chains: int, tune: int, draws: int) -> float:
    """Wall time of one whole call in a fresh process with an empty compile cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ)
        env["PYTENSOR_FLAGS"] = f"compiledir={cache}"
        env["NUMBA_CACHE_DIR"] = cache
        code = (
            "import sys, time, json; t0 = time.perf_counter(); "
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import bench_real_models as b; "
            f"b.run_sampler({sampler!r}, {name!r}, {chains}, {tune}, {draws}, 0); "
            "print(json.dumps(time.perf_counter() - t0))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return float("nan")
        return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--chains", type=int, default=128)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--no-first-run", action="store_true")
    args = parser.parse_args(argv)
    tune, draws = (200, 200) if args.quick else (1000, 1000)
    samplers = ["sample_chains", "pm.sample"]
    if ensure_nutpie(not args.no_install) is not None:
        samplers.append("nutpie")
    print(
        f"## Cost on real models: tune={tune}, draws={draws}; sample_chains with "
        f"{args.chains} chains on one core, pm.sample and nutpie with 2 chains on 2 cores\n"
    )
    print(
        "Steady state (second run in the process, caches warm; sampling time without "
        "compilation): gradient evaluations per second (warm-up included) and smallest "
        "bulk ESS per second. First run: the wall time of a whole first call in a fresh "
        "process with an empty compile cache (compilation included). In the batched call: "
        "the share of sample_chains' sampling time inside the compiled logp+gradient.\n"
    )
    print(
        "| model | sampler | grads / s | min bulk ESS | ESS / s | sampling s | first run s "
        "| in batched call |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        rates = {}
        for sampler in samplers:
            run_sampler(sampler, name, args.chains, 50, 50, 1)  # compile, warm the caches
            r = run_sampler(sampler, name, args.chains, tune, draws, 0)
            cold = (
                float("nan")
                if args.no_first_run
                else first_run(sampler, name, args.chains, tune, draws)
            )
            rates[sampler] = (r["grads"] / r["seconds"], r["ess"] / r["seconds"])
            share = f"{r['inside'] / r['seconds']:.0%}" if sampler == "sample_chains" else ""
            print(
                f"| {name} | {sampler} | {fmt(rates[sampler][0])} | {fmt(r['ess'])} | "
                f"{fmt(rates[sampler][1])} | {fmt(r['seconds'])} | {fmt(cold)} | {share} |",
                flush=True,
            )
        ours = rates["sample_chains"]
        line = (
            f"| {name} | ratio | sample_chains / pm.sample: {ours[0] / rates['pm.sample'][0]:.2f}x "
            f"grads/s, {ours[1] / rates['pm.sample'][1]:.2f}x ESS/s"
        )
        if "nutpie" in rates:
            line += f"; / nutpie: {ours[1] / rates['nutpie'][1]:.2f}x ESS/s"
        print(line + " | | | | | |", flush=True)
    print()


if __name__ == "__main__":
    main()
