"""Clear errors for the optional dependencies (the package's extras)."""

from __future__ import annotations

import importlib.util

__all__ = ["require"]


def _available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:
        # Already in sys.modules with ``__spec__`` None (a stub or a module built at run
        # time): it is importable. (``sys.modules[module] = None`` makes find_spec return
        # None, which is the "blocked" answer.)
        return True
    except ImportError:
        # A meta-path finder that refuses the module, or a missing parent package.
        return False


def require(module: str, extra: str, what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the extra to install when ``module`` is missing.

    The check does not import ``module``; a module that is installed but fails to import
    raises its own error where it is imported.

    Parameters
    ----------
    module : str
        The top-level module needed (``"torch"``).
    extra : str
        The pmm-pymc extra that brings it (``"torch"``).
    what : str
        The part of pmm-pymc that needs it, for the message.

    Raises
    ------
    ModuleNotFoundError
        If ``module`` is not installed, is blocked (``sys.modules[module] = None``) or a
        meta-path finder refuses it; ``name`` is ``module``.
    """
    if not _available(module):
        raise ModuleNotFoundError(
            f"{what} needs {module}, which is not installed; install the extra with "
            f'`pip install "pmm-pymc[{extra}]"`',
            name=module,
        )
