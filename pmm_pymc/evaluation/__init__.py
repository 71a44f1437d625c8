"""What samplers are measured against: reference posteriors, exact testbeds, metrics, networks.

* :mod:`pmm_pymc.evaluation.posteriors`: the bundled posteriordb posteriors (PyMC).
* :mod:`pmm_pymc.evaluation.testbeds`: Gaussian mixtures with exact scores (torch).
* :mod:`pmm_pymc.evaluation.metrics`: sample metrics, one definition each (torch).
* :mod:`pmm_pymc.evaluation.digits`: the small digits ε-network and classifier (torch).

The submodules are imported on use, so that the PyMC side never imports torch.
"""
