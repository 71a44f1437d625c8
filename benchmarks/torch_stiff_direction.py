"""Variance of the ``gaussian`` torch target's draws along each eigendirection, against exact.

The marginal sds of the table mix the eigendirections, which hides the bias of an unadjusted
step in the stiffest one. This script reads the traces of a ``pmm-compare torch`` report and
prints, per sampler, the sample variance along each eigenvector of the target's covariance
divided by the exact variance (stiffest first), beside the exact stationary values of LMC,
``1 / (1 - h lambda / 2)`` with ``h lambda`` the step times the direction's curvature, and of
PMM (the sum over firing patterns of ``tests/test_torch_langevin.py``).

Usage::

    pmm-compare torch --target gaussian --out runs/torch --chains 32 --draws 5000
    python benchmarks/torch_stiff_direction.py runs/torch
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from pmm_pymc.evaluation.torch_targets import get_target


def pmm_stationary_variance(eta: float, K: int) -> float:
    """Exact stationary variance of PMM(eta, K) on N(0, 1) (see tests/test_torch_langevin.py)."""
    EA2 = EB2 = 0.0
    for pattern in itertools.product((0, 1), repeat=K - 1):
        fired = [i + 1 for i, h in enumerate(pattern) if h]
        prob = math.prod(1 / K if h else 1 - 1 / K for h in pattern)
        A = 1 - eta + eta**2 * sum(i / K for i in fired)
        EA2 += prob * A * A
        EB2 += (
            prob * (2 * eta / K) * sum((1 - eta * sum(i > j for i in fired)) ** 2 for j in range(K))
        )
    return EB2 / (1 - EA2)


def main(report: str) -> int:
    target = get_target("gaussian")
    var, vec = np.linalg.eigh(target.covariance)  # ascending: stiffest first
    folder = Path(report) / "gaussian"
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print("curvature of each eigendirection:", 1 / var)
    for path in sorted(folder.glob("*.nc")):
        dt = xr.open_datatree(path)
        post = dt["posterior"]
        x = post["x"].values.reshape(-1, var.size)
        h, K, method = float(post.attrs["step_size"]), int(post.attrs["K"]), post.attrs["method"]
        ratio = ((x - target.mean) @ vec).var(axis=0, ddof=1) / var
        eta = h / var
        if method == "pmm":
            exact = np.array([pmm_stationary_variance(e, K) for e in eta])
        else:
            exact = 1 / (1 - eta / 2)
        print(f"{path.stem:9s} ({method}, h={h:g}, K={K}) measured: {ratio}")
        print(f"{'':9s} exact stationary:            {exact}")
        dt.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
