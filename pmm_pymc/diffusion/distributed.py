"""Data-parallel diffusion sampling on ``torch.distributed``.

Run the same script on every rank (``torchrun --nproc_per_node=N script.py``):
each rank draws a contiguous share of the ``n`` samples, every sample with its
own generator seeded from ``(seed, sample index)``, and the shares are
gathered. Because a sample's random numbers come only from its own generator
(the convention of :func:`pmm_pymc.diffusion.sample` for a list of
generators), the result is the single-process run ``diffusion.sample(model,
shape, ..., generator=sample_generators(seed, 0, n))`` whatever the number of
ranks or the batch size: the same random numbers, the same PMM firing
patterns and NFE. The samples agree bit for bit when the network computes each
row independently of the batch it is in; otherwise (batched matrix kernels
that change with the batch size) they agree to floating-point round-off,
about 1e-6 in float32 and 1e-15 in float64 on the mixture testbeds. Without
an initialised process group, :func:`sample` is that single-process run.

Example
-------
.. code-block:: python

    # torchrun --nproc_per_node=4 sample_digits.py
    import os
    import torch
    import torch.distributed as dist
    from pmm_pymc.diffusion import distributed
    from pmm_pymc.evaluation.digits import load_eps_model

    dist.init_process_group("nccl")  # or "gloo" on CPUs
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    model = load_eps_model(device)
    out = distributed.sample(model, (10_000, 64), "linear", "pmm", seed=0, device=device)
    if dist.get_rank() == 0:
        torch.save(out.samples.cpu(), "samples.pt")
    dist.destroy_process_group()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from pmm_pymc._validate import check_int
from pmm_pymc.diffusion import sampler as diffusion

__all__ = ["DistributedOutput", "sample", "sample_generators", "shard_range"]


class DistributedOutput(NamedTuple):
    """Result of :func:`sample`.

    Attributes
    ----------
    samples : torch.Tensor
        All ``n`` samples on ranks that gathered them (every rank by default,
        or only ``dst``); on the other ranks this rank's share.
    nfe : torch.Tensor, int64, on the CPU
        Network evaluations per sample, aligned with ``samples``.
    indices : torch.Tensor, int64, on the CPU
        The sample indices held in ``samples``.
    n_passes : int
        Sequential network passes made by this rank.
    rank, world_size : int
        This process's rank and the number of ranks (0 and 1 without a
        process group).
    """

    samples: torch.Tensor
    nfe: torch.Tensor
    indices: torch.Tensor
    n_passes: int
    rank: int
    world_size: int


def sample_generators(
    seed: int, start: int, stop: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per sample index in ``[start, stop)``, seeded from ``(seed, index)``.

    The seed of sample ``i`` is the first 64-bit word of
    ``numpy.random.SeedSequence([seed, i])``: well mixed, independent of how
    the samples are split into ranks and batches.

    Parameters
    ----------
    seed : int
        The run's seed, >= 0.
    start, stop : int
        The sample indices, ``0 <= start <= stop``.
    device : torch.device or str, default "cpu"
        Device of the generators. CPU generators give the same numbers on
        every machine and move their draws to the sampling device.

    Returns
    -------
    list of torch.Generator
    """
    seed = check_int("seed", seed, 0)
    start = check_int("start", start, 0)
    stop = check_int("stop", stop, 0)
    if stop < start:
        raise ValueError(f"need start <= stop, got start={start}, stop={stop}")
    gens = []
    for i in range(start, stop):
        state = np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]
        gens.append(torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1)))
    return gens


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``n`` items held by ``rank``.

    Shares differ in size by at most one; the first ``n % world_size`` ranks
    hold the larger ones.
    """
    n = check_int("n", n, 0)
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0, world_size - 1)
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _rank_and_size(group: Any) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise ValueError("a process group was given but torch.distributed is not initialised")
    return 0, 1


def _gather(
    local: torch.Tensor, n: int, world_size: int, group: Any, dst: int | None
) -> torch.Tensor | None:
    """Concatenate every rank's share (padded to equal size for the collective)."""
    backend = dist.get_backend(group)
    comm_device = local.device if backend == "nccl" else torch.device("cpu")
    width = -(-n // world_size)  # the largest share
    padded = local.new_zeros((width, *local.shape[1:]), device=comm_device)
    padded[: local.shape[0]] = local.to(comm_device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    if dst is None:
        dist.all_gather(parts, padded, group=group)
    else:
        rank = dist.get_rank(group)
        global_dst = dst if group is None else dist.get_global_rank(group, dst)
        dist.gather(padded, parts if rank == dst else None, dst=global_dst, group=group)
        if rank != dst:
            return None
    sizes = [b - a for a, b in (shard_range(n, r, world_size) for r in range(world_size))]
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.device)


def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    schedule: Any = "linear",
    method: str = "pmm",
    *,
    seed: int,
    batch_size: int | None = None,
    dst: int | None = None,
    group: Any = None,
    generator_device: torch.device | str = "cpu",
    **kwargs: Any,
) -> DistributedOutput:
    """Sample ``shape[0]`` samples across the ranks of a process group and gather them.

    Parameters
    ----------
    model : callable
        ``model(x, t)``, the ε-network, on this rank's device.
    shape : sequence of int
        ``(n_samples, *event)``: all samples of the run, not a rank's share.
    schedule, method
        As for :func:`pmm_pymc.diffusion.sample`.
    seed : int
        Sample ``i`` uses generator ``sample_generators(seed, i, i + 1)[0]``.
    batch_size : int, optional
        Largest batch a rank passes to the sampler at once (to bound memory);
        the result does not depend on it. Default: the rank's whole share.
    dst : int, optional
        Gather to this rank only (the others get their share). Default:
        every rank gets all samples.
    group : torch.distributed.ProcessGroup, optional
        Default: the world group.
    generator_device : torch.device or str, default "cpu"
        Device of the per-sample generators.
    **kwargs
        Passed on to :func:`pmm_pymc.diffusion.sample` (``steps``, ``K``,
        ``blocks``, ``nfe``, ``device``, ``dtype``, ...), but not ``generator``,
        which this function makes.

    Returns
    -------
    DistributedOutput

    Raises
    ------
    ValueError
        ``shape`` not positive integers, fewer samples than ranks, a bad
        ``batch_size`` or ``dst``, or a ``generator`` in ``kwargs``; any bad
        option of :func:`pmm_pymc.diffusion.sample` (``nfe=True``, say),
        before any network call.
    FloatingPointError
        The model's output or the state became NaN or inf on this rank: the
        message names the rank, its samples, the step and the timestep.

    Notes
    -----
    Every rank must call this with the same arguments; ``torch.distributed``
    collectives (``all_gather`` or ``gather``) are made once for the samples
    and once for the NFE, after sampling.
    """
    if "generator" in kwargs:
        raise ValueError("generator is made per sample from seed; do not pass it")
    if "x_T" in kwargs:
        raise ValueError("x_T is drawn per sample from seed; pass shape, not x_T")
    try:
        dims = list(shape)
    except TypeError as err:
        raise TypeError(f"shape must be a sequence of ints, got {type(shape)!r}") from err
    if not dims:
        raise ValueError(f"shape must be positive integers (n_samples, *event), got {shape!r}")
    shape = tuple(check_int(f"shape[{i}]", s, 1) for i, s in enumerate(dims))
    n = shape[0]
    rank, world_size = _rank_and_size(group)
    if n < world_size:
        raise ValueError(f"n_samples={n} is smaller than the number of ranks ({world_size})")
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    if dst is not None:
        dst = check_int("dst", dst, 0, world_size - 1)

    start, stop = shard_range(n, rank, world_size)
    step = batch_size or (stop - start)
    pieces, nfes, n_passes = [], [], 0
    for a in range(start, stop, step):
        b = min(stop, a + step)
        gens = sample_generators(seed, a, b, generator_device)
        try:
            out = diffusion.sample(
                model, (b - a, *shape[1:]), schedule, method, generator=gens, **kwargs
            )
        except FloatingPointError as err:  # say which rank and samples, as well as the step
            raise FloatingPointError(
                f"rank {rank} of {world_size} (samples {a}..{b - 1}): {err}"
            ) from err
        pieces.append(out.samples)
        nfes.append(torch.as_tensor(out.nfe, dtype=torch.long).cpu())
        n_passes += int(out.n_passes)
    local = torch.cat(pieces)
    local_nfe = torch.cat(nfes)
    if world_size == 1:
        return DistributedOutput(local, local_nfe, torch.arange(n), n_passes, rank, world_size)

    samples = _gather(local, n, world_size, group, dst)
    nfe = _gather(local_nfe.to(local.device), n, world_size, group, dst)
    if samples is None or nfe is None:
        return DistributedOutput(
            local, local_nfe, torch.arange(start, stop), n_passes, rank, world_size
        )
    return DistributedOutput(samples, nfe.cpu(), torch.arange(n), n_passes, rank, world_size)
