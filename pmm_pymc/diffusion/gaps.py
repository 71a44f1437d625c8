"""A PMM block advanced gap by gap between its fired midpoints, one Gaussian per gap.

The frozen-drift rollout of a block, ``x_{j+1} = a_j x_j + g_j b_0 + s_j z_j``, is
affine in ``x`` and ``b_0`` with Gaussian noise, so ``j' - j`` sub-steps of it are one
step

.. math::

    x_{j'} = A\\, x_j + G\\, b_0 + S\\, z, \\qquad
    A = \\prod_{r=j}^{j'-1} a_r, \\quad
    G = \\sum_{r=j}^{j'-1} \\Big(\\prod_{q=r+1}^{j'-1} a_q\\Big) g_r, \\quad
    S^2 = \\sum_{r=j}^{j'-1} \\Big(\\prod_{q=r+1}^{j'-1} a_q\\Big)^2 s_r^2,

exact in distribution (a sum of independent Gaussians is Gaussian), and independent
across disjoint gaps. PMM needs the state only at the midpoints that fire, so each
member's block is its own short chain: from the start to its first fired midpoint, to
the next, ..., to the end, each gap one sub-step of an :class:`~pmm_pymc.core.AffineChain`
whose coefficients differ by member (arrays of shape ``(B, 1, ...)``). The core's
:func:`~pmm_pymc.core.pmm_step` runs it unchanged, with the fine chain's correction
weights passed in. A block of ``K`` sub-steps costs about two Gaussian draws and two
state updates per member instead of ``K``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from pmm_pymc.core import AffineChain, correction_weights

__all__ = ["GapBlock", "gap_block", "gap_tables"]


class GapBlock(NamedTuple):
    """One block as per-member gaps: what :func:`pmm_pymc.core.pmm_step` is called with.

    Attributes
    ----------
    chain : AffineChain
        ``L`` merged sub-steps (``L - 1`` the most midpoints any member fires), each
        coefficient a tensor of shape ``(B, 1, ...)``; a member with fewer fired midpoints
        has identity steps (``A = 1``, ``G = S = 0``) at the end.
    fired : list of (LongTensor or None)
        ``fired[l]``: the members whose ``l``-th stop is a fired midpoint (``fired[0]`` is
        None).
    weights : list of (float or tensor)
        The correction weight of each merged sub-step: the fine chain's weight of the
        member's midpoint there, shape ``(B, 1, ...)``.
    timesteps : list of (LongTensor or None)
        ``timesteps[l][m]``: the timestep of member ``m``'s ``l``-th stop.
    draws : list of numpy.ndarray of bool
        ``draws[l]``: the members for which merged sub-step ``l`` is a real gap (each
        member draws one Gaussian per real gap: its own count, whatever the batch).
    draw_index : list of (LongTensor or None)
        The same members as indices on the state's device (None: all of them).
    """

    chain: AffineChain
    fired: list[torch.Tensor | None]
    weights: list[float | torch.Tensor]
    timesteps: list[torch.Tensor | None]
    draws: list[np.ndarray]
    draw_index: list[torch.Tensor | None]


@functools.lru_cache(maxsize=1024)  # a plan's chains are reused run after run
def gap_tables(chain: AffineChain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A, G, S`` of every gap ``j -> j'`` of a block, as ``(K + 1, K + 1)`` tables.

    Entries with ``j > j'`` are unused; ``j = j'`` is the identity (``1, 0, 0``).
    """
    K = chain.K
    a, g, s = (np.asarray(c, dtype=np.float64) for c in (chain.a, chain.g, chain.s))
    A = np.ones((K + 1, K + 1))
    G = np.zeros((K + 1, K + 1))
    S2 = np.zeros((K + 1, K + 1))
    for j in range(K):  # extend every gap that ends at j by the sub-step j
        rows = slice(0, j + 1)
        A[rows, j + 1] = a[j] * A[rows, j]
        G[rows, j + 1] = a[j] * G[rows, j] + g[j]
        S2[rows, j + 1] = a[j] ** 2 * S2[rows, j] + s[j] ** 2
    return A, G, np.sqrt(S2)


def gap_block(
    chain: AffineChain,
    timesteps: Sequence[int],
    mask: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
    like: torch.Tensor,
) -> GapBlock:
    """The block ``chain`` with the fired midpoints ``mask`` (``(B, K)``, column 0 False).

    Parameters
    ----------
    chain : AffineChain
        The block's fine sub-steps (float coefficients).
    timesteps : sequence of int
        The timestep of each sub-step.
    mask : numpy.ndarray of bool, shape (B, K)
        ``mask[m, i]``: member ``m``'s midpoint ``i`` fires.
    tables : tuple of numpy.ndarray
        :func:`gap_tables` of ``chain``.
    like : torch.Tensor
        The state: the dtype and device of the coefficients, and the shape they broadcast
        against.

    Returns
    -------
    GapBlock
    """
    K = chain.K
    B = mask.shape[0]
    counts = mask.sum(axis=1)
    L = int(counts.max()) + 1
    fired_at = np.sort(np.where(mask, np.arange(K), K), axis=1)[:, : L - 1]
    stops = np.concatenate([np.zeros((B, 1), np.int64), fired_at, np.full((B, 1), K)], axis=1)
    start, end = stops[:, :-1], stops[:, 1:]  # (B, L)
    A, G, S = tables
    shape = (B,) + (1,) * (like.ndim - 1)

    w_fine = np.append(np.asarray(correction_weights(chain)), 0.0)  # index K: nothing fires
    # one host-to-device copy for all the levels' coefficients and weights: (4, B, L)
    table = torch.as_tensor(
        np.stack([A[start, end], G[start, end], S[start, end], w_fine[start]]), dtype=like.dtype
    ).to(like.device)
    a, g, s, w = (tuple(c[:, level].reshape(shape) for level in range(L)) for c in table)
    t_fine = torch.as_tensor(np.append(np.asarray(timesteps, dtype=np.int64), -1)[start])
    t_fine = t_fine.to(like.device)
    fired: list[torch.Tensor | None] = [None]
    weights: list[float | torch.Tensor] = [0.0]
    times: list[torch.Tensor | None] = [None]
    for level in range(1, L):
        members = np.flatnonzero(start[:, level] < K)
        fired.append(torch.as_tensor(members, device=like.device))
        weights.append(w[level])
        times.append(t_fine[:, level])
    draws = [start[:, level] < end[:, level] for level in range(L)]
    draw_index = [
        None if d.all() else torch.as_tensor(np.flatnonzero(d), device=like.device) for d in draws
    ]
    return GapBlock(AffineChain(a, g, s), fired, weights, times, draws, draw_index)
