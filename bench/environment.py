"""Environment metadata: the columns every CSV row carries, so that a number can be traced to where it was measured.

============== ==========================================================================
column         value
============== ==========================================================================
device_name    the GPU's name (``torch.cuda.get_device_name``) or the CPU model (/proc/cpuinfo)
driver         the NVIDIA driver version (NVML), or ``cuda <version>`` of the torch build, or ``n/a``
torch          ``torch.__version__``
triton         ``triton.__version__``, or ``n/a`` when it is not importable
python         ``platform.python_version()``
git_commit     ``git rev-parse --short HEAD`` of the checkout, with ``+dirty`` for uncommitted changes; or
               ``$FDSM_GIT_COMMIT`` when set, for a copied tree whose ``.git`` is not its own
threads        torch intra-op threads at the time of the row
float32_math   ``ieee`` or ``tf32``: how cuDNN convolutions compute in float32 (``use_ieee_float32``)
malloc         ``steady`` where glibc's malloc thresholds were fixed for timing (``bench.memory.steady_malloc``),
               else ``default``
timestamp      ISO 8601 UTC time of the row
============== ==========================================================================
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

from bench.memory import malloc_setting, steady_malloc

METADATA_COLUMNS = ("device_name", "driver", "torch", "triton", "python", "git_commit", "threads", "float32_math",
                    "malloc", "timestamp")
_REPO = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver() -> str:
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # no package, no driver, no GPU: fall back to what torch was built with
        return f"cuda {torch.version.cuda}" if torch.version.cuda else "n/a"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "n/a"
    return triton.__version__


def _git_commit() -> str:
    if os.environ.get("FDSM_GIT_COMMIT"):  # e.g. a lent GPU machine, given the working tree but an old .git;
        return os.environ["FDSM_GIT_COMMIT"]  # the caller vouches that the tree is that commit, unchanged

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return (commit or "n/a") + ("+dirty" if dirty else "")


def module_at(commit: str, path: str, name: str) -> types.ModuleType:
    """The module at ``path`` (from the repository's root) as of ``commit``, read from git and imported as ``name``
    beside the current one: the old side of an A/B measurement (``results/cpu/taylor/lookup``, ``program``)."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=_REPO, capture_output=True, text=True,
                            check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _has_precision_api() -> bool:
    """Whether this torch has the per-backend ``fp32_precision`` flags (torch >= 2.9) beside the legacy
    ``allow_tf32`` ones."""
    return hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")


FLOAT32_MATH = ("ieee", "tf32")


def set_float32_math(mode: str) -> None:
    """How float32 cuDNN convolutions compute in this process: ``"ieee"``, or ``"tf32"``, PyTorch's default on Ampere
    and later GPUs. cuBLAS matrix products stay IEEE either way, as PyTorch's default has them. ``use_ieee_float32``
    is the suite's setting; ``train-steps --float32-math tf32`` times steps the way PyTorch runs them by default."""
    if mode not in FLOAT32_MATH:
        raise ValueError(f"set_float32_math(mode): expected one of {FLOAT32_MATH}, got {mode!r}")
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    if _has_precision_api():  # never mix it with the legacy flags: torch then refuses to read them
        cuda.matmul.fp32_precision = "ieee"
        cudnn.conv.fp32_precision = mode
    else:
        cuda.matmul.allow_tf32 = False
        cudnn.allow_tf32 = mode == "tf32"


def use_ieee_float32() -> None:
    """Make float32 mean IEEE float32 in this process: no TF32 in cuDNN convolutions or cuBLAS matrix products.

    On Ampere and later GPUs PyTorch runs float32 convolutions in TF32 by default, keeping 10 of the 23 mantissa
    bits (relative rounding about 5e-4). An error measured against float64 would then be that rounding, and an FD
    stencil of order T divides it by eps^T. What TF32 did to measured derivative errors, on an H200 against the same
    model in IEEE float32 on the CPU, is in results/gpu-h200/README.md (the Figure 2 run of ``script-run/``).
    Every worker and the CLI call this at start; the CPU is unaffected.
    """
    set_float32_math("ieee")


def prepare_process() -> None:
    """What every process of the suite does at start, the CLI and each worker alike: float32 is IEEE float32
    (``use_ieee_float32``), and glibc's malloc keeps freed pages for the next call (``bench.memory.steady_malloc``),
    so that a call's time does not depend on what the process allocated before it."""
    use_ieee_float32()
    steady_malloc()


def float32_math() -> str:
    """``ieee`` or ``tf32``: how cuDNN convolutions compute in float32 in this process now."""
    cudnn = torch.backends.cudnn
    if _has_precision_api():
        return "tf32" if cudnn.conv.fp32_precision == "tf32" else "ieee"
    return "tf32" if cudnn.allow_tf32 else "ieee"


@functools.cache
def _static(device_type: str, device_index: int | None) -> dict[str, str]:
    if device_type == "cuda":
        name = torch.cuda.get_device_name(device_index)
        driver = _driver()
    else:
        name, driver = _cpu_name(), "n/a"
    return {"device_name": name, "driver": driver, "torch": torch.__version__, "triton": _triton_version(),
            "python": platform.python_version(), "git_commit": _git_commit()}


def metadata(device: torch.device) -> dict[str, str | int]:
    """The ``METADATA_COLUMNS`` for a row measured now on ``device`` (the static part is computed once)."""
    timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {**_static(device.type, device.index), "threads": torch.get_num_threads(), "float32_math": float32_math(),
            "malloc": malloc_setting(), "timestamp": timestamp}
