"""PMM for PyTorch users: diffusion samplers and Langevin sampling of torch log-densities.

* :func:`sample` (:mod:`pmm_pymc.diffusion.sampler`): PMM, DDPM, DDIM and DPM-Solver++ for
  ε-prediction models, a facade over one loop per sampler (``sample_pmm``,
  ``sample_ddpm``, ``sample_ddim``, ``sample_dpmsolver``);
  :mod:`pmm_pymc.diffusion.layout`: timestep grids, PMM block layouts and coefficients;
  :mod:`pmm_pymc.diffusion.gaps`: a PMM block advanced gap by gap between fired midpoints.
* :class:`DDPMSchedule` (:mod:`pmm_pymc.diffusion.schedules`): noise schedules.
* :func:`sample_langevin` (:mod:`pmm_pymc.diffusion.langevin_torch`): PMM or LMC on any torch
  log-density.
* :mod:`pmm_pymc.diffusion.noise`: the caller-owned random numbers;
  :mod:`pmm_pymc.diffusion.distributed`: sampling under ``torchrun``.

Needs the ``torch`` extra (``pip install "pmm-pymc[torch]"``).
"""

from __future__ import annotations

import importlib
from typing import Any

from pmm_pymc._optional import require

require("torch", "torch", "pmm_pymc.diffusion")

__all__ = ["DDPMSchedule", "DiffusionOutput", "LangevinOutput", "sample", "sample_langevin"]

_HOMES = {
    "DDPMSchedule": "schedules",
    "DiffusionOutput": "sampler",
    "LangevinOutput": "langevin_torch",
    "sample": "sampler",
    "sample_langevin": "langevin_torch",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"pmm_pymc.diffusion.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
