"""The random-number plumbing of the torch samplers.

Every Gaussian and Bernoulli of the diffusion sampler and the torch Langevin
sampler comes from the caller's :class:`torch.Generator`, or from a list of
generators with one per batch member, so that with a list each member's draws
do not depend on the batch it is in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["GeneratorArg", "LazyNoise", "RandomSource"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


class RandomSource:
    """Draws every random number of a sampler from the caller's generator(s).

    Parameters
    ----------
    generator : torch.Generator, list of torch.Generator, or None
        One generator for the whole batch, one per batch member, or None for
        torch's global generator.
    batch : int
        The batch size ``B``.
    device : torch.device
        Where the draws are put (they are made on the generator's device and
        moved, as diffusers does for a CPU generator driving a GPU sampler).
    """

    def __init__(self, generator: GeneratorArg, batch: int, device: torch.device) -> None:
        self.device = device
        self.batch = batch
        if generator is None or isinstance(generator, torch.Generator):
            self.single = generator
            self.per_member = None
        elif isinstance(generator, list | tuple):
            if len(generator) != batch:
                raise ValueError(
                    f"generator is a list of {len(generator)} generators but the batch has "
                    f"{batch} members; pass one per member"
                )
            for g in generator:
                if not isinstance(g, torch.Generator):
                    raise TypeError(f"generator list must hold torch.Generator, got {type(g)!r}")
            self.single = None
            self.per_member = list(generator)
        else:
            raise TypeError(
                "generator must be a torch.Generator, a list of them (one per sample) or None, "
                f"got {type(generator)!r}"
            )

    def randn(
        self,
        event_shape: Sequence[int],
        dtype: torch.dtype,
        members: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Standard normals of shape ``(B, *event_shape)`` on :attr:`device`.

        ``members`` (a boolean mask over the batch): with one generator per member, only
        those members draw (the others get zeros), so that a member's draws do not depend
        on the rest of the batch; with one generator, the whole batch draws.
        """
        shape = (self.batch, *event_shape)
        if self.per_member is not None:
            draws = [
                torch.randn(tuple(event_shape), generator=g, device=g.device, dtype=dtype)
                if members is None or members[m]
                else torch.zeros(tuple(event_shape), device=g.device, dtype=dtype)
                for m, g in enumerate(self.per_member)
            ]
            if all(d.device == draws[0].device for d in draws):
                return self._move(torch.stack(draws))
            return torch.stack([self._move(d) for d in draws])
        g = self.single
        if g is None:
            return torch.randn(shape, device=self.device, dtype=dtype)
        return self._move(torch.randn(shape, generator=g, device=g.device, dtype=dtype))

    def randn_rows(self, n: int, event_shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """``n`` rows of standard normals from the single generator (shape ``(n, *event)``).

        For a caller that needs noise for only some members of the batch; with one
        generator per member use :meth:`randn` with ``members``.
        """
        if self.per_member is not None:
            raise ValueError("randn_rows draws from one generator; this source has one per member")
        shape = (n, *event_shape)
        g = self.single
        if g is None:
            return torch.randn(shape, device=self.device, dtype=dtype)
        return self._move(torch.randn(shape, generator=g, device=g.device, dtype=dtype))

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on :attr:`device`; from the CPU to CUDA without waiting for the device.

        A plain copy from pageable host memory synchronises the stream; a copy
        from pinned memory with ``non_blocking=True`` is queued behind the work
        already launched (torch's pinned-memory allocator keeps the buffer alive
        until the copy is done).
        """
        if t.device.type == "cpu" and self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def uniforms(self, n: int) -> np.ndarray:
        """``n`` uniforms per member, shape ``(B, n)``, float64 on the host.

        This is the one host transfer of a run: the sampler turns the
        uniforms into Bernoulli firing patterns and index tensors before its
        loop, so that the loop itself never waits on the device.
        """
        if self.per_member is not None:
            rows = [
                torch.rand(n, generator=g, device=g.device, dtype=torch.float64).cpu()
                for g in self.per_member
            ]
            return torch.stack(rows).numpy() if rows else np.zeros((0, n))
        g = self.single
        if g is None:
            u = torch.rand((self.batch, n), dtype=torch.float64)
        else:
            u = torch.rand((self.batch, n), generator=g, device=g.device, dtype=torch.float64)
        return u.cpu().numpy()


class LazyNoise:
    """``noise[i]`` draws the scaled Gaussian of sub-step ``i`` when the core asks for it.

    Sub-steps whose noise scale is zero draw nothing and return ``0.0``.
    """

    def __init__(
        self,
        source: RandomSource,
        event_shape: Sequence[int],
        dtype: torch.dtype,
        scales: Sequence[float],
        scale_tensor: torch.Tensor | None = None,
    ) -> None:
        self.source = source
        self.event_shape = tuple(event_shape)
        self.dtype = dtype
        self.scales = scales
        self.scale_tensor = scale_tensor

    def __getitem__(self, i: int) -> torch.Tensor | float:
        if self.scales[i] == 0.0:
            return 0.0
        z = self.source.randn(self.event_shape, self.dtype)
        return z if self.scale_tensor is None else z * self.scale_tensor
