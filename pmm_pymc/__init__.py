"""pmm-pymc: the Poisson Midpoint Method for Langevin dynamics, for PyMC and PyTorch."""

from pmm_pymc.core import AffineChain, PMMInfo, langevin_chain, pmm_step

__version__ = "0.1.0"

__all__ = ["AffineChain", "PMMInfo", "__version__", "langevin_chain", "pmm_step"]
