"""Compare samplers: PMM against LMC (and NUTS) on PyMC models, and diffusion samplers.

* :func:`compare_samplers`: PyMC step methods on one model at an equal budget of gradient
  evaluations, with ArviZ diagnostics and the error against reference draws
  (:mod:`pmm_pymc.compare.mcmc`, :mod:`pmm_pymc.compare.diagnostics`).
* :func:`compare_langevin`: PMM and LMC settings on a torch log-density at an equal gradient
  budget, the same tables (:mod:`pmm_pymc.compare.torch_langevin`; needs the ``torch`` extra).
* :func:`compare_diffusion`: torch diffusion samplers on a testbed, metrics against network
  evaluations (:mod:`pmm_pymc.compare.diffusion`; needs the ``torch`` extra).
* :mod:`pmm_pymc.compare.report` and :mod:`pmm_pymc.compare.plots`: the markdown reports and
  figures ``pmm-compare`` writes.

The submodules are imported on first use, so that a PyMC user never imports torch and the
diffusion side never imports PyMC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmm_pymc.compare.diffusion import DiffusionComparison, compare_diffusion
    from pmm_pymc.compare.mcmc import SamplerComparison, compare_samplers, jittered_initvals
    from pmm_pymc.compare.torch_langevin import LangevinSettings, compare_langevin

__all__ = [
    "DiffusionComparison",
    "LangevinSettings",
    "SamplerComparison",
    "compare_diffusion",
    "compare_langevin",
    "compare_samplers",
    "jittered_initvals",
]

_HOMES = {
    "DiffusionComparison": "diffusion",
    "compare_diffusion": "diffusion",
    "LangevinSettings": "torch_langevin",
    "compare_langevin": "torch_langevin",
    "SamplerComparison": "mcmc",
    "compare_samplers": "mcmc",
    "jittered_initvals": "mcmc",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        module = importlib.import_module(f"pmm_pymc.compare.{_HOMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
