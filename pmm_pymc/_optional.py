"""Clear errors for the optional dependencies (the package's extras)."""

from __future__ import annotations

import importlib.util

__all__ = ["require"]


def require(module: str, extra: str, what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the extra to install when ``module`` is missing.

    Parameters
    ----------
    module : str
        The top-level module needed (``"torch"``).
    extra : str
        The pmm-pymc extra that brings it (``"torch"``).
    what : str
        The part of pmm-pymc that needs it, for the message.
    """
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"{what} needs {module}, which is not installed; install the extra with "
            f'`pip install "pmm-pymc[{extra}]"`',
            name=module,
        )
