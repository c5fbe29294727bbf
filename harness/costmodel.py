"""PLACEHOLDER cost model: analytic work per call, device peaks, roofline prediction.

This file is a placeholder with the agreed interface only; the cost-model helper writes the real
implementation and the lead takes theirs at merge. The numbers here are rough (a dense-transformer
FLOP count and one matmul/copy probe), enough for the runner's columns and dry run to work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from harness.network import DiTConfig
from samplers.base import CallRecord


@dataclass(frozen=True)
class Peaks:
    """Measured device peaks (placeholder)."""

    flops_per_s: float
    bytes_per_s: float
    call_overhead_s: float
    device: str
    dtype: str
    source: str


_PEAKS: dict[tuple[str, str], Peaks] = {}


def _probe(fn: Any, device: str) -> float:
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return max(time.perf_counter() - t0, 1e-9)


def measure_peaks(
    device: str = "cpu", dtype: torch.dtype = torch.float32, *, refresh: bool = False
) -> Peaks:
    """Probe matmul FLOP/s, copy bandwidth and empty-call overhead (placeholder, cached)."""
    key = (device, str(dtype))
    if key in _PEAKS and not refresh:
        return _PEAKS[key]
    n = 256
    a = torch.randn(n, n, device=device, dtype=dtype)
    big = torch.empty(1 << 20, device=device, dtype=dtype)
    flops = 2 * n**3 / _probe(lambda: a @ a, device)
    bw = 2 * big.numel() * big.element_size() / _probe(big.clone, device)
    overhead = _probe(lambda: None, device)
    _PEAKS[key] = Peaks(flops, bw, overhead, device, str(dtype), "placeholder probe")
    return _PEAKS[key]


def sample_cost(
    model_cfg: DiTConfig, calls: list[CallRecord], batch_size: int, dtype_bytes: int
) -> dict[str, float]:
    """Rough FLOPs, bytes and attention pairs of ``calls`` for the whole batch (placeholder)."""
    d, n, v = model_cfg.hidden_size, model_cfg.n_blocks, model_cfg.vocab_size
    params = n * 12 * d * d
    flops = bytes_ = pairs = 0.0
    for fed, q, k, head in calls:
        flops += batch_size * (2 * params * fed + 4 * n * d * q * k + 2 * d * v * head)
        bytes_ += (params + d * v) * dtype_bytes
        pairs += batch_size * n * q * k
    return {"flops_analytic": flops, "bytes_analytic": bytes_, "attn_pairs": pairs}


def predict_seconds(
    model_cfg: DiTConfig,
    calls: list[CallRecord],
    batch_size: int,
    peaks: Peaks,
    dtype_bytes: int,
    model: Any = None,
) -> float:
    """Roofline time: max(FLOPs/peak, bytes/bandwidth) + per-call overhead (placeholder)."""
    cost = sample_cost(model_cfg, calls, batch_size, dtype_bytes)
    if not calls:
        return math.nan
    compute = cost["flops_analytic"] / peaks.flops_per_s
    memory = cost["bytes_analytic"] / peaks.bytes_per_s
    return max(compute, memory) + len(calls) * peaks.call_overhead_s


def call_overhead(model: Any, device: str, dtype: torch.dtype) -> float:
    """Per-call fixed overhead of ``model`` (placeholder: the device's empty-call overhead)."""
    return measure_peaks(device, dtype).call_overhead_s
