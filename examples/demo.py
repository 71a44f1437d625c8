"""Placeholder demo: the PMM core on a 1-D Gaussian (replaced by the PyMC demo)."""

import numpy as np

from pmm_pymc.core import fired_from_mask, langevin_chain, pmm_step

rng = np.random.default_rng(0)
eta, K, n = 0.2, 8, 2000
x = rng.standard_normal((n, 1))
for _ in range(200):
    mask = rng.random((K, n)) < 1 / K
    x, _ = pmm_step(
        lambda p, g: -p,
        x,
        -x,
        rng.standard_normal((K, n, 1)),
        fired_from_mask(mask),
        langevin_chain(eta, K),
    )
print(f"PMM(eta={eta}, K={K}) variance on N(0,1): {x.var():.4f} (exact 1.0277; LMC 1.1111)")
