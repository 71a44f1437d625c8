"""MCMC for PyMC users: the Langevin kernel, the warm-up, the step methods and many chains.

* :mod:`pmm_pymc.mcmc.kernel`: the one batched Langevin transition (PMM or LMC).
* :mod:`pmm_pymc.mcmc.warmup`: the one warm-up (windows, step size, preconditioner).
* :mod:`pmm_pymc.mcmc.steps`: :class:`PoissonMidpoint` and :class:`LangevinMC` for ``pm.sample``,
  and their kinetic versions :class:`UnderdampedPoissonMidpoint`, :class:`UnderdampedLangevin`.
* :mod:`pmm_pymc.mcmc.chains`: :func:`sample_chains`, many chains with one vectorised gradient.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "LangevinMC",
    "PoissonMidpoint",
    "UnderdampedLangevin",
    "UnderdampedPoissonMidpoint",
    "sample_chains",
]

_HOMES = {name: "steps" for name in __all__[:4]} | {"sample_chains": "chains"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"pmm_pymc.mcmc.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
