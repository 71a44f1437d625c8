"""Time the torch diffusion sampler spends outside the network (issue 5, item 3).

The network is wrapped in a module that adds up the wall time of its forward
calls (on the CPU every call is synchronous, so this is its true cost); the
rest of ``pmm_pymc.diffusion.sample``'s wall time is the sampler's own: the
coefficient arithmetic, the noise, the midpoint bookkeeping and the checks.
Printed per method and batch size at about 80 network evaluations per sample,
eager and under ``torch.compile`` of the model. Medians of ``--repeats`` runs.

The network is the package's digits ε-MLP (hidden 256, 2 residual blocks): the
bundled trained weights when present, else a randomly initialised one of the
same shape (the timing does not depend on the weights).

    python benchmarks/bench_speed_diffusion.py
    python benchmarks/bench_speed_diffusion.py --quick --no-compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pmm_pymc.diffusion import sampler as diffusion
from pmm_pymc.evaluation.digits import EpsMLP, load_eps_model


class TimedNet(torch.nn.Module):
    """``net`` with the wall time and the number of its forward calls recorded."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seconds = 0.0
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.net(x, t)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def small_network() -> tuple[torch.nn.Module, str]:
    try:
        return load_eps_model(), "the bundled trained digits ε-MLP"
    except FileNotFoundError:
        torch.manual_seed(0)
        return EpsMLP().eval(), "a randomly initialised digits ε-MLP (no bundled weights)"


#: Sampler label -> sample() options at about 80 NFE.
RUNS = {
    "pmm": {"method": "pmm", "nfe": 80},
    "pmm (noise per sub-step)": {"method": "pmm", "nfe": 80, "noise_by": "substep"},
    "ddpm": {"method": "ddpm", "steps": 80},
}


def one_run(net: torch.nn.Module, batch: int, label: str, seed: int) -> tuple[float, float, float]:
    """(total seconds, network seconds, mean NFE) of one sampling run."""
    timed = TimedNet(net)
    kwargs = dict(RUNS[label])
    method = kwargs.pop("method")
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = diffusion.sample(timed, (batch, 64), "linear", method, generator=gen, **kwargs)
    total = time.perf_counter() - t0
    return total, timed.seconds, float(out.nfe.float().mean())


def table(net: torch.nn.Module, label: str, batches: list[int], repeats: int) -> None:
    print(f"### {label}\n")
    print("| method | batch | NFE | total s | network s | outside network |")
    print("|---|---|---|---|---|---|")
    for method in RUNS:
        for batch in batches:
            one_run(net, batch, method, seed=123)  # warm-up (and compilation)
            runs = [one_run(net, batch, method, seed=r) for r in range(repeats)]
            total = statistics.median(r[0] for r in runs)
            inside = statistics.median(r[1] for r in runs)
            frac = statistics.median(1 - r[1] / r[0] for r in runs)
            nfe = statistics.median(r[2] for r in runs)
            print(
                f"| {method} | {batch} | {nfe:.1f} | {total:.3f} | {inside:.3f} | "
                f"{100 * frac:.1f}% |"
            )
    print()


def rollout_floor(batch: int, steps: int, d: int = 64) -> float:
    """Seconds for ``steps`` sub-steps of Gaussians plus ``x = a x + g e + s z`` on (batch, d).

    PMM runs the frozen-drift rollout through every fine sub-step of its plan,
    drawing each sub-step's noise: this is that work alone.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(batch, d)
    e = torch.ones(batch, d)
    t0 = time.perf_counter()
    for _ in range(steps):
        z = torch.randn(batch, d, generator=gen)
        x = 1.001 * x + 0.01 * e + 0.1 * z
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine more threads spin-wait)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, what = small_network()
    batches = [64, 512] if args.quick else [16, 256, 2048]
    repeats = 2 if args.quick else args.repeats
    print("# bench_speed_diffusion\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; network: {what}; "
        f"load average at start {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )
    print(
        "PMM: default block layout at an 80-NFE budget; DDPM: 80 respaced ancestral steps "
        f"(the reference overhead of the simplest chain). Median of {repeats} runs.\n"
    )
    with torch.no_grad():
        table(net, "eager", batches, repeats)
        probe = diffusion.sample(net, (2, 64), "linear", "pmm", nfe=80)
        n_sub = int(sum(probe.blocks))
        print("### The rollout's own work\n")
        print(
            f"The default 80-NFE PMM plan has {len(probe.blocks)} blocks over {n_sub} fine "
            f"sub-steps. Time of {n_sub} sub-steps of Gaussian noise and the affine update "
            "`x = a x + g e + s z` on (batch, 64) alone, the work of the frozen-drift rollout "
            "(eager torch, one op at a time):\n"
        )
        for batch in batches:
            floor = statistics.median(rollout_floor(batch, n_sub) for _ in range(repeats))
            print(f"- batch {batch}: {floor:.3f} s")
        print()
        if not args.no_compile:
            t0 = time.perf_counter()
            compiled = torch.compile(net, dynamic=True)
            try:
                table(compiled, "torch.compile(model, dynamic=True)", batches, repeats)
                print(
                    f"(torch.compile section including compilation: "
                    f"{time.perf_counter() - t0:.0f} s)\n"
                )
            except Exception as err:  # report, do not hide, a compile failure
                print(f"torch.compile failed: {err!r}\n")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
