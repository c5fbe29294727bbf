"""PLACEHOLDER peak-memory readers with the agreed interface.

The memory helper writes the real one; the lead takes theirs at merge.
"""

from __future__ import annotations

import gc
import math
import resource
import sys
from typing import Any

import torch


def reset_peaks(device: str) -> None:
    """Collect garbage and reset the device's peak-memory counters."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def read_peaks(device: str) -> dict:
    """``peak_alloc_gb``, ``peak_reserved_gb``, ``peak_rss_gb``, ``nvml_used_gb`` (NaN if n/a)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_gb = rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9
    out = {"peak_alloc_gb": math.nan, "peak_reserved_gb": math.nan, "peak_rss_gb": rss_gb}
    out["nvml_used_gb"] = math.nan
    if device.startswith("cuda"):
        out["peak_alloc_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        out["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    return out


def kv_cache_bytes(
    model_cfg: Any,
    sampler_name: str,
    params: dict,
    batch_size: int,
    seq_len: int,
    dtype_bytes: int,
) -> float:
    """Analytic cache size in bytes for the whole batch (placeholder: NaN)."""
    return math.nan
