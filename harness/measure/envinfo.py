"""Environment fingerprint stored with every run (``measurement.md`` §9).

:func:`fingerprint` returns one flat, JSON-serialisable dict: provenance (git commit and dirty
flag), software versions, hardware, threads and the numerics switches that change results.
Anything unavailable is ``None`` (a string field) or NaN (a number), never guessed.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from harness.measure.costmodel import cpu_model, machine_fingerprint
from harness.measure.energy import nvml_handle, nvml_module

REPO_ROOT = Path(__file__).resolve().parents[2]

OPTIONAL_PACKAGES = ("numpy", "triton", "transformers", "safetensors", "tokenizers", "nvidia-ml-py")


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """``git_commit`` (full SHA), ``git_dirty`` (tracked or untracked changes); None off git."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git(repo, "status", "--porcelain")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the optional packages (``None`` when absent)."""
    out: dict[str, str | None] = {}
    for name in OPTIONAL_PACKAGES:
        try:
            out[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = None
    return out


def numerics() -> dict[str, Any]:
    """The global switches that change numerics: TF32, matmul precision, cuDNN, determinism."""
    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
    }


def threads() -> dict[str, Any]:
    """Thread settings: torch intra-/inter-op threads, the usable CPUs, OMP/MKL variables."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"),
    }


def _nvml_str(fn: Any, *args: Any) -> str | None:
    try:
        val = fn(*args)
    except Exception:
        return None
    return val.decode() if isinstance(val, bytes) else str(val)


def _nvml_num(fn: Any, *args: Any, scale: float = 1.0) -> float:
    try:
        return float(fn(*args)) * scale
    except Exception:
        return math.nan


def nvml_info(device: str, nvml: Any) -> dict[str, Any]:
    """Driver, MIG/ECC modes, power limit and clocks of ``device`` from NVML (a fake in tests)."""
    nv = nvml
    out: dict[str, Any] = {
        "nvidia_driver": _nvml_str(nv.nvmlSystemGetDriverVersion),
        "cuda_driver_version": _nvml_num(nv.nvmlSystemGetCudaDriverVersion),
    }
    try:
        h = nvml_handle(nv, device)
    except Exception:
        return out
    sm, mem = getattr(nv, "NVML_CLOCK_SM", 1), getattr(nv, "NVML_CLOCK_MEM", 2)
    mig = _nvml_str(lambda: nv.nvmlDeviceGetMigMode(h)[0])
    ecc = _nvml_str(lambda: nv.nvmlDeviceGetEccMode(h)[0])
    out.update(
        gpu_uuid=_nvml_str(nv.nvmlDeviceGetUUID, h),
        mig_mode=None if mig is None else mig == "1",
        ecc_mode=None if ecc is None else ecc == "1",
        power_limit_w=_nvml_num(nv.nvmlDeviceGetEnforcedPowerLimit, h, scale=1e-3),
        sm_clock_mhz=_nvml_num(nv.nvmlDeviceGetClockInfo, h, sm),
        mem_clock_mhz=_nvml_num(nv.nvmlDeviceGetClockInfo, h, mem),
        sm_clock_max_mhz=_nvml_num(nv.nvmlDeviceGetMaxClockInfo, h, sm),
        sm_clock_app_mhz=_nvml_num(nv.nvmlDeviceGetApplicationsClock, h, sm),
    )
    return out


def gpu_info(device: str) -> dict[str, Any]:
    """GPU name, memory, count and compute capability from torch (``None`` off CUDA)."""
    if device.split(":")[0] != "cuda" or not torch.cuda.is_available():
        return {"gpu_name": None, "gpu_memory_gb": math.nan, "gpu_count": 0, "gpu_capability": None}
    props = torch.cuda.get_device_properties(torch.device(device))
    return {
        "gpu_name": props.name,
        "gpu_memory_gb": props.total_memory / 1e9,
        "gpu_count": torch.cuda.device_count(),
        "gpu_capability": f"{props.major}.{props.minor}",
    }


def fingerprint(device: str, *, nvml: Any = None, repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Everything about this environment that can change a measured number.

    Args:
        device: the device the run uses (``cpu``, ``cuda:0``).
        nvml: an NVML module (tests); default ``pynvml`` if usable and ``device`` is CUDA.
        repo: the git checkout to describe (default: this package's).

    Returns:
        A flat dict: ``device``, ``git_commit``, ``git_dirty``, ``python``, ``os``, ``hostname``,
        ``cpu_model``, ``machine_fingerprint``, ``torch``, ``cuda_runtime``, ``cudnn``,
        ``cpu_capability``, ``mkldnn``, versions of ``numpy``/``triton``/``transformers``/
        ``safetensors``/``tokenizers``/``nvidia_ml_py``, thread settings, numerics switches, GPU
        name/memory/count/capability, and from NVML (CUDA only) the driver, MIG/ECC modes,
        power limit and clocks.
    """
    cuda = device.split(":")[0] == "cuda"
    out: dict[str, Any] = {
        "device": device,
        **git_info(repo),
        "python": platform.python_version(),
        "os": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "machine_fingerprint": machine_fingerprint(device),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        **package_versions(),
        **threads(),
        **numerics(),
        **gpu_info(device),
    }
    nv = nvml if nvml is not None else (nvml_module() if cuda else None)
    if cuda and nv is not None:
        out.update(nvml_info(device, nv))
    return out
