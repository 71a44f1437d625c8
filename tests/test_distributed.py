"""Data-parallel sampling: a 2-process gloo run equals the single-process run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pmm_pymc.diffusion import distributed
from pmm_pymc.diffusion import sampler as diffusion
from pmm_pymc.diffusion.distributed import sample_generators, shard_range
from pmm_pymc.diffusion.schedules import DDPMSchedule
from pmm_pymc.evaluation.testbeds import get_testbed

N, SEED = 7, 3  # 7 samples on 2 ranks: shares of 4 and 3, so the padding path runs
# float64, so that the only differences left between runs that split the samples
# differently are the round-off of batch-size-dependent matrix kernels (~1e-15)
RUN = {"steps": 200, "K": 10, "dtype": torch.float64}
ATOL = 1e-12


def make_model():
    return get_testbed("mixture2d").eps_model(DDPMSchedule.linear(1000))


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        model = make_model()
        every = distributed.sample(model, (N, 2), "linear", "pmm", seed=SEED, **RUN)
        to_zero = distributed.sample(
            model, (N, 2), "linear", "pmm", seed=SEED, dst=0, batch_size=2, **RUN
        )
        torch.save(
            {"every": tuple(every), "to_zero": tuple(to_zero)}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def run_two_processes(tmp_path: Path, timeout_s: float = 120.0) -> list[dict]:
    """Spawn two gloo ranks (file:// rendezvous, no network) and collect their results."""
    init_file = tmp_path / "rendezvous"
    ctx = mp.spawn(_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"the 2-process run did not finish within {timeout_s} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_gloo_processes_equal_the_single_process_run(tmp_path):
    single = distributed.sample(make_model(), (N, 2), "linear", "pmm", seed=SEED, **RUN)
    assert single.world_size == 1 and single.samples.shape == (N, 2)
    # the single-process wrapper is diffusion.sample with per-sample generators
    direct = diffusion.sample(
        make_model(), (N, 2), "linear", "pmm", generator=sample_generators(SEED, 0, N), **RUN
    )
    assert torch.equal(single.samples, direct.samples)
    # and does not depend on the batch size beyond round-off; the Bernoullis are identical
    batched = distributed.sample(
        make_model(), (N, 2), "linear", "pmm", seed=SEED, batch_size=3, **RUN
    )
    torch.testing.assert_close(batched.samples, single.samples, rtol=0, atol=ATOL)
    assert torch.equal(batched.nfe, single.nfe)

    results = run_two_processes(tmp_path)
    for rank, res in enumerate(results):
        samples, nfe, indices, _, got_rank, world = res["every"]
        assert (got_rank, world) == (rank, 2)
        torch.testing.assert_close(samples, single.samples, rtol=0, atol=ATOL)
        assert torch.equal(nfe, single.nfe)
        assert torch.equal(indices, torch.arange(N))
    samples0, nfe0, idx0, *_ = results[0]["to_zero"]
    torch.testing.assert_close(samples0, single.samples, rtol=0, atol=ATOL)
    assert torch.equal(nfe0, single.nfe)
    samples1, nfe1, idx1, *_ = results[1]["to_zero"]
    assert torch.equal(idx1, torch.arange(4, N))
    torch.testing.assert_close(samples1, single.samples[4:], rtol=0, atol=ATOL)
    assert torch.equal(nfe1, single.nfe[4:])


def test_shard_range_partitions():
    for n in (1, 7, 10, 11):
        for w in (1, 2, 3, 4):
            if n < w:
                continue
            ranges = [shard_range(n, r, w) for r in range(w)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_sample_generators_depend_on_seed_and_index_only():
    a = [g.initial_seed() for g in sample_generators(0, 0, 5)]
    b = [g.initial_seed() for g in sample_generators(0, 2, 5)]
    c = [g.initial_seed() for g in sample_generators(1, 0, 5)]
    assert a[2:] == b
    assert len(set(a)) == 5 and not set(a) & set(c)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: distributed.sample(m, (4, 2), seed=0, generator=None), ValueError, "generator"),
        (lambda m: distributed.sample(m, (4, 2), seed=0, x_T=None), ValueError, "x_T"),
        (lambda m: distributed.sample(m, (0, 2), seed=0), ValueError, r"shape\[0\] must be an"),
        (lambda m: distributed.sample(m, (), seed=0), ValueError, "shape must be positive"),
        (lambda m: distributed.sample(m, (4.5, 2), seed=0), ValueError, r"shape\[0\] must be"),
        (lambda m: distributed.sample(m, (4, True), seed=0), ValueError, r"shape\[1\] must be"),
        (lambda m: distributed.sample(m, (4, 2), seed=0, batch_size=True), ValueError, "batch_"),
        (lambda m: shard_range(5, True, 2), ValueError, "rank must be an integer"),
        (lambda m: distributed.sample(m, 4, seed=0), TypeError, "shape must be a sequence"),
        (lambda m: distributed.sample(m, (4, 2), seed=-1), ValueError, "seed must be"),
        (lambda m: distributed.sample(m, (4, 2), seed=0, batch_size=0), ValueError, "batch_size"),
        (
            lambda m: distributed.sample(m, (4, 2), seed=0, dst=1),
            ValueError,
            r"dst must be an integer in \[0, 0\]",
        ),
        (lambda m: distributed.sample(m, (4, 2), seed=0, group=object()), ValueError, "not init"),
        (lambda m: shard_range(5, 2, 2), ValueError, r"rank must be an integer in \[0, 1\]"),
        (lambda m: shard_range(5, 0, 0), ValueError, "world_size must be"),
        (lambda m: sample_generators(0, 3, 2), ValueError, "start <= stop"),
        (lambda m: distributed.sample(m, (4, 2), seed=0, nfe=True), ValueError, "nfe must be"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(make_model())


def test_numpy_integers_are_accepted_as_counts():
    """Options go through pmm_pymc._validate: numpy integers count, booleans do not."""
    assert shard_range(np.int64(5), np.int64(1), np.int64(2)) == shard_range(5, 1, 2)
    model, shape = make_model(), (np.int64(4), 2)
    out = distributed.sample(
        model, shape, "linear", "ddim", seed=0, batch_size=np.int64(2), steps=5
    )
    assert out.samples.shape == (4, 2)


def test_non_finite_values_name_the_rank():
    """Without a process group this process is rank 0 of 1; the error names the rank, the
    samples of its batch, and the step and timestep (from the sampler)."""

    def model(x, t):
        return x * float("nan") if int(t.max()) < 500 else 0.0 * x

    with pytest.raises(
        FloatingPointError,
        match=r"rank 0 of 1 \(samples 0\.\.1\): the model returned NaN or inf at step \d+",
    ):
        distributed.sample(model, (4, 2), "linear", "ddpm", seed=0, steps=10, batch_size=2)
