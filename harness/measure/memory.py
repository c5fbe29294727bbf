"""Peak memory of a cell and analytic cache sizes (``measurement.md`` §7).

Columns (decimal GB, 1e9 bytes; NaN where a reading does not apply, never 0):

* ``peak_alloc_gb`` / ``peak_reserved_gb``: torch's CUDA allocator high-water marks since
  :func:`reset_peaks` (NaN on CPU).
* ``nvml_used_gb``: memory in use on the whole GPU now, from NVML: every process and the CUDA
  context included, so it is larger than ``peak_reserved_gb`` (NaN on CPU or without NVML).
* ``peak_rss_gb``: the process's peak resident set. On Linux it is ``VmHWM`` from
  ``/proc/self/status``, which :func:`reset_peaks` resets by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux ≥ 4.0). Where that write is refused, or without ``/proc``, it
  falls back to ``getrusage``'s ``ru_maxrss``, a **process-lifetime** peak that earlier cells
  inflate; ``peak_rss_scope`` says which (``since_reset`` / ``process_lifetime``). Run one process
  per cell for memory-critical numbers (§7.4).

Analytic cache sizes (:func:`cache_bytes`) follow §7.3. Before a cell runs, its peak is bounded
by :func:`estimate_peak_bytes` and compared with :func:`available_bytes`.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any, Literal

import torch

from harness.measure.energy import nvml_handle, nvml_module
from harness.model.hf.config import HFModelConfig
from harness.model.hf.cost import weights_in_memory

GB = 1e9
CacheKind = Literal["kv", "qkv", "px0"]

_rss_reset_ok = False


def _is_cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"


def _clear_refs() -> bool:
    """Reset the kernel's peak-RSS mark of this process (``VmHWM``); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def reset_peaks(device: str) -> None:
    """Collect garbage and reset the peak counters for ``device`` (and the process's RSS peak).

    On CUDA: synchronise, empty the allocator cache, reset torch's peak statistics.
    """
    global _rss_reset_ok
    gc.collect()
    if _is_cuda(device) and torch.cuda.is_available():
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    _rss_reset_ok = _clear_refs()


def _status_kib(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` in KiB; NaN where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def peak_rss() -> tuple[float, str]:
    """(peak resident bytes, scope): ``VmHWM`` since the last reset, else ``ru_maxrss``."""
    hwm = _status_kib("VmHWM")
    if not math.isnan(hwm) and _rss_reset_ok:
        return hwm * 1024.0, "since_reset"
    if not math.isnan(hwm):
        return hwm * 1024.0, "process_lifetime"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(maxrss if sys.platform == "darwin" else maxrss * 1024), "process_lifetime"


def nvml_used_bytes(device: str, nvml: Any = None) -> float:
    """Bytes in use on the GPU behind ``device`` (all processes); NaN without NVML."""
    if not _is_cuda(device):
        return math.nan
    nv = nvml if nvml is not None else nvml_module()
    if nv is None:
        return math.nan
    try:
        return float(nv.nvmlDeviceGetMemoryInfo(nvml_handle(nv, device)).used)
    except Exception:  # NVML errors, a missing device
        return math.nan


def read_peaks(device: str, *, nvml: Any = None) -> dict[str, Any]:
    """Peak memory since :func:`reset_peaks`.

    Args:
        device: ``cpu`` or ``cuda[:i]``.
        nvml: an NVML module for tests; default ``pynvml`` if usable.

    Returns:
        ``peak_alloc_gb``, ``peak_reserved_gb``, ``nvml_used_gb`` (NaN on CPU), ``peak_rss_gb``,
        ``peak_rss_scope`` (``since_reset`` or ``process_lifetime``).
    """
    rss, scope = peak_rss()
    out: dict[str, Any] = {
        "peak_alloc_gb": math.nan,
        "peak_reserved_gb": math.nan,
        "peak_rss_gb": rss / GB,
        "peak_rss_scope": scope,
        "nvml_used_gb": nvml_used_bytes(device, nvml) / GB,
    }
    if _is_cuda(device) and torch.cuda.is_available():
        dev = torch.device(device)
        out["peak_alloc_gb"] = torch.cuda.max_memory_allocated(dev) / GB
        out["peak_reserved_gb"] = torch.cuda.max_memory_reserved(dev) / GB
    return out


def cache_bytes(
    model_cfg: Any,
    kind: CacheKind,
    batch_size: int,
    seq_len: int,
    dtype_bytes: int,
    *,
    with_mask: bool = False,
) -> float:
    """Analytic size of a sampler's cache for the whole batch, in bytes (§7.3).

    * ``kv``: rotated K and V per layer (Eso-LM, AR, efficient BD3-LM): 2·N·L·d·s·b
      (37.7 MB per sample for DiT-small at L = 1024 in bf16);
    * ``qkv``: the reference BD3-LM cache, un-rotated Q, K, V per layer: 3·N·L·d·s·b (56.6 MB),
      plus the (L, L) boolean block mask, 1 byte per entry, shared by the batch, if ``with_mask``;
    * ``px0``: the MDLM no-change cache of p_x0: b·L·V·s.

    Args:
        model_cfg: the network configuration (``hidden_size``, ``n_blocks``, ``vocab_size``).
        kind: ``kv``, ``qkv`` or ``px0``.
        batch_size: b.
        seq_len: L, the cache rows.
        dtype_bytes: s, bytes per element of the cache.
        with_mask: count the ``qkv`` cache's mask as :meth:`QKVCache.nbytes` does.

    Raises:
        ValueError: an unknown ``kind``.
    """
    d, N, V = model_cfg.hidden_size, model_cfg.n_blocks, model_cfg.vocab_size
    b, L, s = batch_size, seq_len, dtype_bytes
    if kind in ("kv", "qkv") and (d is None or N is None):  # an hf: config without d or N
        return math.nan
    if kind == "kv":
        return float(2 * N * L * d * s * b)
    if kind == "qkv":
        return float(3 * N * L * d * s * b + (L * L if with_mask else 0))
    if kind == "px0":
        return float(b * L * V * s)
    raise ValueError(
        f"cache kind {kind!r} is unknown; allowed: 'kv' (Eso-LM, AR, efficient BD3-LM), "
        "'qkv' (reference BD3-LM), 'px0' (MDLM no-change cache)."
    )


ACTIVATION_WIDTH = 8
"""k in the activation term b·L·(k·d·s + 4·V): the widest per-token hidden state of a block
(QKV 3d + attention output d + MLP 4d = 8d, at mlp_ratio 4)."""

WEIGHT_BYTES = 4
"""Bytes per weight: the weights stay float32 (bfloat16 runs under autocast)."""


def weight_count(model_cfg: Any) -> int:
    """Parameters of the network, analytically: N blocks of linears and AdaLN, embedding, head.

    Per block: the linears (QKV, out, MLP) ``(3 + 1 + 2r)·d² + (r + 1)·d`` and the AdaLN
    modulation ``c·6d + 6d``; plus the embedding ``V·d``, the head ``d·V + V`` and its AdaLN
    ``c·2d``, and the σ embedder ``256·c + c²``.

    An ``hf:`` model (:class:`~harness.model.hf.config.HFModelConfig`): the parameters its
    safetensors headers list, or the weight files' bytes / 4 for ``.bin`` checkpoints.
    """
    if isinstance(model_cfg, HFModelConfig):
        if model_cfg.n_params is not None:
            return model_cfg.n_params
        return model_cfg.weight_bytes // WEIGHT_BYTES
    d, n, v = model_cfg.hidden_size, model_cfg.n_blocks, model_cfg.vocab_size
    c, r = model_cfg.cond_dim, getattr(model_cfg, "mlp_ratio", 4)
    block = (4 + 2 * r) * d * d + (r + 1) * d + 6 * d * (c + 1) + 2 * d
    return n * block + 2 * v * d + v + 2 * d * c + 256 * c + c * c


def estimate_peak_bytes(
    model_cfg: Any,
    cache_kind: str | None,
    batch_size: int,
    seq_len: int,
    dtype_bytes: int,
    *,
    weights: bool = True,
    fed_rows: int | None = None,
    head_rows: int | None = None,
) -> float:
    """A rough upper bound of one cell's peak memory, in bytes.

    ``weights + cache + activations`` with

    * weights: :func:`weight_count` × 4 bytes (float32; skipped when ``weights`` is False, e.g.
      the model is resident already);
    * cache: :func:`cache_bytes` of the sampler's cache kind (``kv``, ``qkv`` with its mask,
      ``px0``), 0 without one;
    * activations: ``b·(F·k·d·s + H·4·V)``: one layer's widest hidden states for the F rows fed
      per call (k = :data:`ACTIVATION_WIDTH`, s = ``dtype_bytes``) and float32 logits for the H
      head rows per call. F and H are the largest of the sampler's expected calls
      (``fed_rows``, ``head_rows``), L where unknown.

    Attention scores are not counted (fused kernels do not materialise them).

    An ``hf:`` model (:class:`~harness.model.hf.config.HFModelConfig`): its weights take
    :func:`~harness.model.hf.cost.weights_in_memory` (parameters × bytes of ``hf.dtype``, else
    the files' size); its forward computes float32-sized logits for every fed row (H = F); the
    hidden-state term needs ``hidden_size`` and is left out where config.json gives none.
    """
    if isinstance(model_cfg, HFModelConfig):
        return _hf_peak_bytes(
            model_cfg, cache_kind, batch_size, seq_len, dtype_bytes, weights, fed_rows
        )
    d, v = model_cfg.hidden_size, model_cfg.vocab_size
    b, L = batch_size, seq_len
    fed = L if fed_rows is None else fed_rows
    head = L if head_rows is None else head_rows
    total = float(weight_count(model_cfg) * WEIGHT_BYTES) if weights else 0.0
    if cache_kind is not None:
        total += cache_bytes(model_cfg, cache_kind, b, L, dtype_bytes, with_mask=True)
    return total + float(b * (fed * ACTIVATION_WIDTH * d * dtype_bytes + head * 4 * v))


def _hf_peak_bytes(
    cfg: HFModelConfig,
    cache_kind: str | None,
    batch_size: int,
    seq_len: int,
    dtype_bytes: int,
    weights: bool,
    fed_rows: int | None,
) -> float:
    """:func:`estimate_peak_bytes` of an ``hf:`` model (see there)."""
    b, L = batch_size, seq_len
    fed = L if fed_rows is None else fed_rows
    total = weights_in_memory(cfg) if weights else 0.0
    if cache_kind is not None:
        cache = cache_bytes(cfg, cache_kind, b, L, dtype_bytes, with_mask=True)
        total += 0.0 if math.isnan(cache) else cache
    hidden = 0 if cfg.hidden_size is None else fed * ACTIVATION_WIDTH * cfg.hidden_size
    return total + float(b * (hidden * dtype_bytes + fed * 4 * cfg.vocab_size))


def _meminfo_available() -> float:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes; else free pages × page size; else NaN."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.nan


def available_bytes(device: str) -> float:
    """Memory a new cell on ``device`` can use, in bytes; NaN where unknown.

    CUDA: the device's free memory plus what this process's allocator holds in reserve
    (``mem_get_info`` + reserved − allocated). Otherwise: the host's ``MemAvailable``.
    """
    if _is_cuda(device):
        if not torch.cuda.is_available():
            return math.nan
        dev = torch.device(device)
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return float(free + cached)
    if device.split(":")[0] == "mps":
        return math.nan
    return _meminfo_available()
