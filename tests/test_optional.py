"""Without the ``torch`` extra, every torch module says which extra to install.

torch is installed here, so its absence is simulated in a fresh interpreter, in the two ways
an import can find no torch: ``sys.modules["torch"] = None`` (import blocked) and meta-path
finders that do not find it (as when it is not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pmm_pymc._optional import require

ROOT = Path(__file__).resolve().parents[1]
EXTRA = 'pip install "pmm-pymc[torch]"'

TORCH_MODULES = [
    "pmm_pymc.diffusion",
    "pmm_pymc.diffusion.sampler",
    "pmm_pymc.diffusion.schedules",
    "pmm_pymc.evaluation.testbeds",
    "pmm_pymc.evaluation.metrics",
    "pmm_pymc.evaluation.digits",
    "pmm_pymc.compare.diffusion",
]
# The PyMC side must keep working without torch.
TORCHLESS_MODULES = ["pmm_pymc", "pmm_pymc.core", "pmm_pymc.compare", "pmm_pymc.cli"]

BLOCK = "import sys; sys.modules['torch'] = None\n"
HIDE = """\
import sys


class Hide:
    def __init__(self, finder):
        self.finder = finder

    def __getattr__(self, name):  # find_distributions, invalidate_caches, ...
        return getattr(self.finder, name)

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)


sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
"""
PROBE = """
import importlib, json
found = {}
for name in %r:
    try:
        importlib.import_module(name)
        found[name] = None
    except BaseException as err:
        found[name] = f"{type(err).__name__}: {err}"
print(json.dumps(found))
"""


def _import_each(prelude: str, modules: list[str]) -> dict[str, str | None]:
    """Import each module in one fresh interpreter; the error of each (None: imported)."""
    proc = subprocess.run(
        [sys.executable, "-c", prelude + PROBE % (modules,)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("prelude", [BLOCK, HIDE], ids=["blocked", "not-installed"])
def test_torch_modules_name_the_extra(prelude):
    errors = _import_each(prelude, TORCH_MODULES + TORCHLESS_MODULES)
    for module in TORCH_MODULES:
        error = errors[module]
        assert error is not None and error.startswith("ModuleNotFoundError: "), (module, error)
        assert EXTRA in error and "needs torch" in error, (module, error)
    for module in TORCHLESS_MODULES:
        assert errors[module] is None, (module, errors[module])


def test_require_with_the_module_blocked(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModuleNotFoundError, match=r"pmm_pymc\.x needs torch") as info:
        require("torch", "torch", "pmm_pymc.x")
    assert EXTRA in str(info.value) and info.value.name == "torch"


def test_require_with_a_module_without_spec(monkeypatch):
    """A module in sys.modules with ``__spec__`` None (a stub) is there: find_spec would
    raise ValueError; require accepts it."""
    stub = types.ModuleType("pmm_stub_module")
    stub.__spec__ = None
    monkeypatch.setitem(sys.modules, "pmm_stub_module", stub)
    require("pmm_stub_module", "torch", "pmm_pymc.x")


def test_require_with_a_refusing_finder(monkeypatch):
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "pmm_refused":
                raise ModuleNotFoundError(f"{name} is blocked", name=name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="pmm_pymc.x needs pmm_refused"):
        require("pmm_refused", "extra", "pmm_pymc.x")
    require("json", "extra", "pmm_pymc.x")  # present: no error
