"""PLACEHOLDER environment fingerprint with the agreed interface.

The environment helper writes the real one; the lead takes theirs at merge.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def fingerprint(device: str) -> dict:
    """Git commit and dirty flag, Python/torch/CUDA versions, CPU/GPU model and threads."""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "threads": torch.get_num_threads(),
        "device": device,
    }
