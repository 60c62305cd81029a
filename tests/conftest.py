"""Test-session setup shared by every test module.

The Triton kernels are decorated when ``kernels`` is first imported, and Triton reads ``TRITON_INTERPRET`` then;
setting it here, before any test module imports ``kernels`` or ``triton``, runs them on the CPU under the
interpreter (see NOTE [the Triton interpreter] in ``kernels/backend.py``). ``setdefault`` lets a GPU runner pass
``TRITON_INTERPRET=0`` to test the compiled kernels instead.

``load_script`` imports one of ``scripts/*.py``, which are run by path, not installed.
"""

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("TRITON_INTERPRET", "1")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """The module ``scripts/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
