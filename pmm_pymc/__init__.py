"""pmm-pymc: the Poisson Midpoint Method for Langevin dynamics, for PyMC and PyTorch.

``from pmm_pymc import PoissonMidpoint, LangevinMC, sample_chains`` gives the PyMC
samplers (and ``UnderdampedPoissonMidpoint``, ``UnderdampedLangevin``, their kinetic
versions); they are loaded lazily so that ``pmm_pymc.core`` and the torch modules do not
import PyMC.
"""

from typing import Any

from pmm_pymc.core import AffineChain, PMMInfo, langevin_chain, pmm_step

__version__ = "0.1.0"

__all__ = [
    "AffineChain",
    "LangevinMC",
    "PMMInfo",
    "PoissonMidpoint",
    "UnderdampedLangevin",
    "UnderdampedPoissonMidpoint",
    "__version__",
    "langevin_chain",
    "pmm_step",
    "sample_chains",
]

_LAZY = {
    "PoissonMidpoint": "pmm_pymc.mcmc.steps",
    "LangevinMC": "pmm_pymc.mcmc.steps",
    "UnderdampedPoissonMidpoint": "pmm_pymc.mcmc.steps",
    "UnderdampedLangevin": "pmm_pymc.mcmc.steps",
    "sample_chains": "pmm_pymc.mcmc.chains",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pmm_pymc' has no attribute {name!r}")
