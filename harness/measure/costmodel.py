"""Analytic work of network calls (FLOPs, bytes), device peaks, and time prediction.

**FLOP model** (``published-numbers.md`` §8). For one :data:`~samplers.base.CallRecord`
``(fed, queries, keys, head_rows)`` of one batch row, forward only:

* linears: ``fed · 2·N·(3d² + d² + 2·r·d²)`` (QKV, attention output, the two MLP matrices;
  r = ``mlp_ratio``; = 2·12·d²·N for r = 4);
* attention: ``queries · keys · 4·d·N`` (QKᵀ and AV, dense: a mask does not save work in SDPA);
* head: ``head_rows · 2·d·V``.

Counted: exactly the matrix products, as ``torch.utils.flop_counter`` counts them (mm/addmm/bmm,
2 FLOPs per multiply-add). Ignored: biases, embedding gather, LayerNorm, AdaLN modulation and the
AdaLN projections (zero per call once ``freeze_conditioning`` ran), rotary, softmax, GELU,
residuals, the mask, and sampling arithmetic (< 5 % for DiT-small, §8). A batch multiplies
everything by b. The tests check this against ``FlopCounterMode`` on real calls, exactly.

**Byte model** (deliberately simple, for the roofline's memory term). Per call, whole batch,
at ``dtype_bytes`` s per element:

* weights: every block linear (weights and biases) once per call, plus the head (d·V + V) when
  ``head_rows > 0``, plus the b·fed embedding rows gathered (norm weights and the frozen AdaLN
  vectors, < 0.1 %, are ignored);
* K/V: per layer, K and V of every key read once and of every fed row written once:
  ``N·b·2·d·(keys + fed)``;
* activations: per layer and fed row, each linear reads its input and writes its output and
  attention reads the query and writes the output, ``(10 + 2r)·d`` elements (elementwise ops are
  taken as fused); the head reads ``d`` and writes ``V`` per head row (logits kept separately).

**Time models** (:func:`predict_seconds`; network calls only: the sampling arithmetic of a
full-mode run (SUBS, top-p, Gumbel, commits) is not in a ``CallRecord`` and is not predicted):

* ``roofline`` (any hardware, also hand-built :class:`Peaks` for the paper's A6000 / H200): per
  call, compute = FLOPs / ``flops_per_s``, memory = bytes / ``bytes_per_s``, overhead = fixed per
  call. ``combine="max"``: max(compute, memory, overhead), the GPU picture where the host enqueues
  kernels asynchronously and its overhead hides behind device work (or the reverse).
  ``combine="sum"``: overhead + max(compute, memory), the CPU picture: one thread dispatches and
  computes, so nothing overlaps. Default: ``sum`` on CPU, ``max`` on CUDA. With ``model=`` the
  overhead is measured (:func:`calibrate_calls`) so that the model reproduces a 1-token call.
* ``table`` (CPU; the default there when ``model=`` is given): per call, the time of each GEMM
  and each attention call read from a :class:`MicroTable` of measured op times (interpolated
  over a power-of-two grid of sizes; the reference BD3-LM path also pays a measured rotary op
  on every re-attended row), plus the architecture's *residual*: what a call costs beyond those
  ops (dispatch, LayerNorm, AdaLN, rotary, GELU, cache writes, the final layer), measured on
  bidirectional calls feeding 1-512 tokens with and without the head and interpolated in the
  fed tokens, plus, for an Eso-LM step, the measured extra of its masked step path.
  Calibration comes only from micro-measurements: the table's op timings and a few calls of the
  architecture itself at fixed shapes (:func:`calibrate_calls`), never from sampler timings.

Evidence (2-vCPU AMD EPYC dev box, torch 2.13 CPU, fp32, one thread, cpu-s with V = 8193, batch
1; ``tests/bench/test_costmodel_bench.py``; the box is shared, so repeated runs vary by ≈ ±10 %):

* A single large-matmul peak (1024², ≈ 105-111 GFLOP/s) overpredicts the speed of the model's
  skinny GEMMs: a d = 128 linear runs at 10-25 GFLOP/s on 1 row, 28-50 on 4, ≈ 85 on 16 and
  reaches the peak only from ≈ 64 rows; the V = 8193 head on 1-4 rows runs at 30-50 GFLOP/s.
  The CPU SDPA kernel reaches 70-84 GFLOP/s on 128-512 queries but 10-47 on 1-4 queries; a
  causal mask saves nothing (the kernel computes dense) and a boolean mask costs 15-20 % more.
  Hence the table.
* Sum, not max, on CPU: a 1-token call costs ≈ 0.51 ms, of which ≈ 0.36-0.38 ms is fixed
  overhead, and the ops it runs add on top of it. Predicted / measured for single calls (Eso-LM
  steps, AR steps, BD3-LM block and store calls, full forwards at L = 128-512) was 0.88-0.97
  with the table, 0.66-0.98 with roofline-sum and 0.60-0.96 with roofline-max.
* Network-only runs (Eso-LM, MDLM first-hitting, BD3-LM L′ = 4 first-hitting with store passes,
  AR): predicted / measured 0.90-0.97 (table) at L = 256, 0.83-1.01 at L = 512. Ratios,
  predicted / measured: MDLM / Eso-LM 1.07-1.08 (L = 256) and 1.17 (L = 512); BD3-LM / Eso-LM
  1.03 and 1.13; AR / Eso-LM 1.05 and 1.22. Eso-LM steps are the most underpredicted calls
  (≈ 5-10 %: a 2-token call inside the network costs ≈ 35 µs more than its parts measured
  alone), which inflates every ratio over Eso-LM by as much.
* Residual curve (2 threads, wall clock): an affine residual through 1 and 64 tokens predicted
  a 512-token forward 10 % slow (elementwise ops on > 64 rows go multi-threaded: 9 → 6 µs per
  token) and a 4-token BD3-LM block call 12 % fast (the head's fixed ops: ≈ 75 µs); the curve
  brought single calls (Eso-LM steps at 2-510 keys, BD3-LM block and store calls at L′ = 4 and
  16, full forwards at 128 and 512) to 0.95-1.02. The CPU-scaled Table 11 run
  (``configs/paper/table11_cpu.yaml``, 2 threads, fresh cache) then measured / predicted
  1.00-1.06 per cell except the reference BD3-LM L′ = 4 cells (1.08, 1.19), and every ratio
  over Eso-LM within -2 % … +16 % of the prediction (it was -22 % … +35 % before the rotary op
  and the curve).
* Known misses: the reference path's per-call concatenations and slicing of the whole cache are
  only partly in the table, and the sampler's own loop (slicing, bookkeeping) adds a few µs per
  step. Evicting L2 between table calls, to mimic the network, was tried and made full forwards
  5-9 % worse without helping small calls.

Measured numbers are cached in JSON under ``$DLMBENCH_CACHE_DIR`` (default
``~/.cache/dlmbench``), keyed by a machine fingerprint, device, dtype and thread count. With one
CPU thread they are measured in thread CPU time (:func:`measurement_clock`), so a busy shared
machine does not inflate them; elsewhere in wall time, with a warning when the machine is loaded.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from harness.model.network import DiTConfig, rotate, step_mask

CallRecord = tuple[int, int, int, int]
"""(fed, attention queries, attention keys, head rows) per batch row; see ``samplers.base``."""

Combine = Literal["max", "sum"]
Method = Literal["auto", "roofline", "table"]

# ---------------------------------------------------------------------------------------------
# Analytic work per call
# ---------------------------------------------------------------------------------------------


def linear_shapes(cfg: DiTConfig) -> list[tuple[int, int, bool]]:
    """The (in, out, has_bias) of one block's linears, in call order: QKV, out, MLP up, MLP down."""
    d, r = cfg.hidden_size, cfg.mlp_ratio
    return [(d, 3 * d, False), (d, d, False), (d, r * d, True), (r * d, d, True)]


def flops_per_token(cfg: DiTConfig) -> int:
    """Linear FLOPs of one fed token through all N blocks: 2·N·Σ in·out (= 2·12·d²·N at r = 4)."""
    return 2 * cfg.n_blocks * sum(k * n for k, n, _ in linear_shapes(cfg))


def flops_per_head_row(cfg: DiTConfig) -> int:
    """Head FLOPs of one row: 2·d·V."""
    return 2 * cfg.hidden_size * cfg.vocab_size


def flops_per_pair(cfg: DiTConfig) -> int:
    """Attention FLOPs of one (query, key) pair over all layers and heads: 4·d·N."""
    return 4 * cfg.hidden_size * cfg.n_blocks


def flops_conditioning(cfg: DiTConfig) -> int:
    """AdaLN FLOPs of one row, 0 for AR: σ-map 256 → c → c, N blocks' c → 6d, final c → 2d.

    Only the reference BD3-LM path pays them per call (bd3lms recomputes AdaLN at every call);
    the other paths use the frozen σ = 0 vectors.
    """
    c, d = cfg.cond_dim, cfg.hidden_size
    return 2 * (256 * c + c * c + cfg.n_blocks * c * 6 * d + c * 2 * d) if cfg.adaln else 0


@dataclass(frozen=True)
class CallCost:
    """Analytic FLOPs and bytes of one network call for the whole batch."""

    flops_linear: float
    flops_attention: float
    flops_head: float
    bytes_weights: float
    bytes_kv: float
    bytes_activations: float
    bytes_logits: float

    @property
    def flops(self) -> float:
        """Total FLOPs."""
        return self.flops_linear + self.flops_attention + self.flops_head

    @property
    def bytes(self) -> float:
        """Total bytes moved."""
        return self.bytes_weights + self.bytes_kv + self.bytes_activations + self.bytes_logits


def check_call(rec: Any) -> CallRecord:
    """Validate one call record (4 non-negative ints, keys ≥ 1 when queries ≥ 1).

    Raises:
        ValueError: naming the record received and what a record must look like.
    """
    ok = isinstance(rec, (tuple, list)) and len(rec) == 4
    if ok:
        try:
            vals = tuple(int(v) for v in rec)
        except (TypeError, ValueError):
            ok = False
    if not ok or min(vals) < 0 or (vals[1] > 0 and vals[2] == 0):
        raise ValueError(
            f"call record {rec!r} is not (fed, queries, keys, head_rows) with non-negative ints "
            "(and keys >= 1 when queries >= 1). Build records as samplers.base.CallRecord."
        )
    return vals  # type: ignore[return-value]


def call_cost(cfg: DiTConfig, rec: CallRecord, batch_size: int, dtype_bytes: int) -> CallCost:
    """FLOPs and bytes of one call (see the module docstring for what is counted).

    Args:
        cfg: the network configuration.
        rec: (fed, queries, keys, head_rows) per batch row.
        batch_size: b.
        dtype_bytes: bytes per element of weights, cache and activations.
    """
    fed, q, keys, head = check_call(rec)
    b, s, d, N = batch_size, dtype_bytes, cfg.hidden_size, cfg.n_blocks
    V, r = cfg.vocab_size, cfg.mlp_ratio
    shapes = linear_shapes(cfg)
    block_params = N * sum(k * n + (n if bias else 0) for k, n, bias in shapes)
    head_params = d * V + V if head > 0 else 0
    cond = flops_conditioning(cfg) if q > fed else 0  # the reference path (call_mask "block")
    return CallCost(
        flops_linear=float(b * fed * flops_per_token(cfg) + b * cond),
        flops_attention=float(b * q * keys * flops_per_pair(cfg)),
        flops_head=float(b * head * flops_per_head_row(cfg)),
        bytes_weights=float(s * (block_params + head_params + b * fed * d)),
        bytes_kv=float(s * N * b * 2 * d * (keys + fed)),
        bytes_activations=float(s * b * (N * fed * (10 + 2 * r) * d + head * d)),
        bytes_logits=float(s * b * head * V),
    )


def sample_cost(
    model_cfg: DiTConfig, calls: Iterable[CallRecord], batch_size: int, dtype_bytes: int
) -> dict[str, float]:
    """Analytic work of a whole sample (every network call of one ``execute``).

    Args:
        model_cfg: the network configuration.
        calls: ``SampleResult.calls`` (per batch row) or ``expected_calls(...)``.
        batch_size: b.
        dtype_bytes: bytes per element (2 for bf16, 4 for fp32).

    Returns:
        ``flops_analytic`` and ``bytes_analytic`` (whole batch, summed over calls), with their
        parts ``flops_linear``, ``flops_attention``, ``flops_head``, ``bytes_weights``,
        ``bytes_kv``, ``bytes_activations``, ``bytes_logits``; per sequence (like
        ``token_forwards``): ``attn_pairs`` = Σ queries·keys (one layer, one head: multiply by
        ``flops_per_pair`` for FLOPs), ``token_forwards`` = Σ fed, ``head_rows``; and
        ``n_calls``, ``flops_per_call_mean``, ``flops_per_call_max``.
    """
    counts = Counter(check_call(c) for c in calls)
    out = dict.fromkeys(
        ["flops_linear", "flops_attention", "flops_head", "bytes_weights", "bytes_kv"]
        + ["bytes_activations", "bytes_logits", "attn_pairs", "token_forwards", "head_rows"],
        0.0,
    )
    fmax = 0.0
    for rec, n in counts.items():
        cc = call_cost(model_cfg, rec, batch_size, dtype_bytes)
        for f in fields(CallCost):
            out[f.name] += n * getattr(cc, f.name)
        out["attn_pairs"] += n * rec[1] * rec[2]
        out["token_forwards"] += n * rec[0]
        out["head_rows"] += n * rec[3]
        fmax = max(fmax, cc.flops)
    out["flops_analytic"] = out["flops_linear"] + out["flops_attention"] + out["flops_head"]
    out["bytes_analytic"] = sum(out[k] for k in out if k.startswith("bytes_"))
    n_calls = sum(counts.values())
    out["n_calls"] = float(n_calls)
    out["flops_per_call_mean"] = out["flops_analytic"] / n_calls if n_calls else math.nan
    out["flops_per_call_max"] = fmax if n_calls else math.nan
    return out


# ---------------------------------------------------------------------------------------------
# Machine identity and the JSON cache
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$DLMBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlmbench``, else ``~/.cache/dlmbench``."""
    if os.environ.get("DLMBENCH_CACHE_DIR"):
        return Path(os.environ["DLMBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlmbench"


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_fingerprint(device: str = "cpu") -> str:
    """A short hash naming this machine and software stack for ``device`` (the cache key).

    Includes the host name, CPU model and count, the torch version, and for CUDA the GPU name,
    so measured peaks are never reused on other hardware or another torch build.
    """
    parts = [
        platform.node(),
        platform.machine(),
        cpu_model(),
        str(os.cpu_count()),
        torch.__version__,
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(torch.device(device)))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def measurement_key(device: str, dtype: torch.dtype | str) -> str:
    """Cache key: machine fingerprint, device type, dtype and (on CPU) the torch thread count."""
    dev = torch.device(device)
    threads = f"|threads={torch.get_num_threads()}" if dev.type == "cpu" else ""
    return f"{machine_fingerprint(device)}|{dev.type}|{_dtype_name(dtype)}{threads}"


def _dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")


def _read_json(name: str) -> dict[str, Any]:
    path = cache_dir() / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _merge_json(name: str, key: str, value: Any) -> None:
    """Re-read the cache file, set ``key`` and write it back atomically (temp file + rename)."""
    path = cache_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_json(name)
    data[key] = value
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def measurement_clock(device: str) -> Callable[[], float]:
    """The clock micro-measurements use on ``device``.

    On a CPU with one torch thread: ``time.thread_time``, the CPU time of the calling thread,
    where all of torch's work then runs. It equals the wall time on a quiet machine and, unlike
    the wall time, is not inflated when other processes share the cores (measured on the shared
    development box at load 3 per core: a cpu-s forward over 512 tokens took 56 ms wall, 29.9 ms
    CPU time, against 29.7 ms wall when quiet). Otherwise (several threads, CUDA):
    ``time.perf_counter``, the wall time.
    """
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def time_samples(
    fn: Callable[[], Any],
    device: str,
    *,
    sample_s: float = 2e-3,
    samples: int = 7,
    clock: Callable[[], float] | None = None,
) -> list[float]:
    """Seconds per call of ``fn``: ``samples`` samples, each looping ``fn`` for ≥ ``sample_s``.

    One warm-up call first; the device is synchronised around every sample, so the per-call
    time includes host overhead and device work. ``clock`` defaults to
    :func:`measurement_clock`.
    """
    clock = clock or measurement_clock(device)
    fn()
    _sync(device)
    inner = 1
    while True:
        t0 = clock()
        for _ in range(inner):
            fn()
        _sync(device)
        dt = clock() - t0
        if dt >= sample_s or inner >= 1 << 16:
            break
        inner = min(1 << 16, max(2 * inner, int(inner * 1.2 * sample_s / max(dt, 1e-9))))
    out = [dt / inner]
    for _ in range(samples - 1):
        t0 = clock()
        for _ in range(inner):
            fn()
        _sync(device)
        out.append((clock() - t0) / inner)
    return out


# ---------------------------------------------------------------------------------------------
# Device peaks
# ---------------------------------------------------------------------------------------------


def spec_sheets() -> dict[str, tuple[float, float]]:
    """name (lower case): (dense bf16 tensor-core FLOP/s, memory bandwidth bytes/s).

    Read from ``baselines/data/hardware.yaml``, the one documented source of the GPU presets
    (with derivations and sources; sparsity figures are twice these), so the cost model and the
    baselines can never disagree.
    """
    from baselines import load_hardware

    hw = load_hardware()
    return {
        str(n).lower(): (float(f), float(b))
        for n, f, b in zip(
            hw["name"], hw["peak_bf16_dense_flop_s"], hw["mem_bandwidth_bytes_s"], strict=True
        )
    }


@dataclass(frozen=True)
class Peaks:
    """Device throughput for the roofline model.

    Build by hand for other hardware (``Peaks(155e12, 768e9, 6.5e-3, "A6000", "bfloat16",
    "spec sheet")``, or :meth:`from_spec`) or measure this machine's with :func:`measure_peaks`.

    Attributes:
        flops_per_s: peak matmul FLOP/s.
        bytes_per_s: memory bandwidth, bytes moved (read + written) per second.
        call_overhead_s: fixed time per network call. Architecture-specific: ``measure_peaks``
            leaves 0.0; :func:`call_overhead` measures it for one model, and
            :func:`predict_seconds` uses that when given the model.
        device: where the peaks hold (``cpu``, ``cuda:0``, ``A6000``, ...).
        dtype: the dtype measured (``float32``, ``bfloat16``).
        source: how the numbers were obtained.
    """

    flops_per_s: float
    bytes_per_s: float
    call_overhead_s: float
    device: str
    dtype: str
    source: str

    @classmethod
    def from_spec(cls, name: str, call_overhead_s: float, dtype: str = "bfloat16") -> Peaks:
        """Spec-sheet peaks of a named GPU (``a6000``, ``h200``) with a given per-call overhead.

        The peaks come from ``baselines/data/hardware.yaml`` (:func:`spec_sheets`).

        Raises:
            ValueError: unknown name (lists the known ones).
        """
        sheets = spec_sheets()
        if name.lower() not in sheets:
            raise ValueError(
                f"no spec sheet for {name!r}; known: {sorted(sheets)}. Build Peaks(...) by "
                "hand with the device's FLOP/s, bandwidth and per-call overhead instead."
            )
        flops, bw = sheets[name.lower()]
        return cls(flops, bw, call_overhead_s, name, dtype, "spec sheet (unverified)")

    @property
    def is_cpu(self) -> bool:
        """Whether these peaks describe a CPU."""
        return self.device.split(":")[0] == "cpu"


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    got = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(got, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16'.")
    return got


def _matmul_peak(device: str, dtype: torch.dtype) -> tuple[float, int]:
    """Best FLOP/s of an n×n matmul, n doubled from 256 until one product takes ≥ 10 ms."""
    n_max = 4096 if device.startswith("cpu") else 16384
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        best = min(time_samples(lambda a=a, b=b: a @ b, device, sample_s=0.01, samples=5))
        if best >= 0.01 or n >= n_max:
            return 2 * n**3 / best, n
        n *= 2


def _copy_bandwidth(device: str, dtype: torch.dtype) -> tuple[float, int]:
    """Best bytes/s (read + write) of copying a buffer well beyond the caches."""
    nbytes = (64 << 20) if device.startswith("cpu") else (1 << 30)
    x = torch.ones(
        nbytes // torch.empty((), dtype=dtype).element_size(), device=device, dtype=dtype
    )
    y = torch.empty_like(x)
    best = min(time_samples(lambda: y.copy_(x), device, sample_s=0.02, samples=5))
    return 2 * nbytes / best, nbytes


def measure_peaks(
    device: str = "cpu", dtype: torch.dtype = torch.float32, *, refresh: bool = False
) -> Peaks:
    """This machine's matmul peak and copy bandwidth (cached per machine; ≈ 1-3 s when measured).

    Args:
        device: ``cpu`` or ``cuda[:i]``.
        dtype: the matmul and copy dtype.
        refresh: measure again even if the cache holds a value.

    Returns:
        :class:`Peaks` with ``call_overhead_s = 0.0`` (per-call overhead belongs to an
        architecture: see :func:`call_overhead`).
    """
    dtype = _resolve_dtype(dtype)
    key = measurement_key(device, dtype)
    cached = _read_json("peaks.json").get(key)
    if cached and not refresh:
        return Peaks(**cached)
    load = _warn_if_loaded(f"{device} peaks", device) if device.startswith("cpu") else math.nan
    flops, n = _matmul_peak(device, dtype)
    bw, nbytes = _copy_bandwidth(device, dtype)
    peaks = Peaks(
        flops_per_s=flops,
        bytes_per_s=bw,
        call_overhead_s=0.0,
        device=device,
        dtype=_dtype_name(dtype),
        source=(
            f"measured {time.strftime('%Y-%m-%d %H:%M')}: best of 5 {n}x{n} matmuls, best of 5 "
            f"copies of {nbytes >> 20} MiB; threads={torch.get_num_threads()}; "
            f"load per CPU {load:.2f}; clock {measurement_clock(device).__name__}"
        ),
    )
    _merge_json("peaks.json", key, asdict(peaks))
    return peaks


# ---------------------------------------------------------------------------------------------
# Measured op-time tables (CPU time model)
# ---------------------------------------------------------------------------------------------

GRID_FLOPS_CAP = 2e9
"""Largest op measured for a table point; bigger ops are extrapolated at that point's rate."""

TABLE_SAMPLES = 7
"""Samples per table point (each ≥ 2 ms of repeated calls); the point is their minimum."""

TABLE_RETRIES = 3
"""Re-measurements of a point that is implausibly slow next to its half-size neighbour."""

TABLE_SLACK = 1.1
"""Tolerance of that check: a point may take up to 1.1 × twice its half-size neighbour."""


def _pow2_bracket(x: int, cap: int) -> tuple[int, int]:
    """Powers of two lo ≤ x ≤ hi (lo = hi when x is one), both ≤ ``cap`` (a power of two)."""
    if x >= cap:
        return cap, cap
    lo = 1 << (max(x, 1).bit_length() - 1)
    return lo, (lo if lo == x else 2 * lo)


def _lerp(x: float, x0: int, x1: int, y0: float, y1: float) -> float:
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _cap_pow2(limit: float) -> int:
    """Largest power of two ≤ ``limit`` (at least 1)."""
    return 1 << max(0, int(math.floor(math.log2(max(limit, 1.0)))))


class MicroTable:
    """Measured seconds of the ops a network call runs, on a power-of-two size grid.

    ``gemm_s(m, k, n, bias)``: ``F.linear`` of (1, m, k) by an (n, k) weight, measured at the
    powers of two around m and interpolated linearly in m (time is close to affine in m between
    neighbouring grid points). ``sdpa_s(b, H, q, keys, d_h)``: ``scaled_dot_product_attention``
    with queries laid out as the network's (b, q, H, d_h) transposed and contiguous (b, H, keys,
    d_h) keys/values (the cache layout), bilinear in (q, keys), which is exact for a time of the
    form a + b·q + c·keys + d·q·keys. Sizes beyond ``GRID_FLOPS_CAP`` are extrapolated at the
    largest measured point's throughput. Points are measured on first use (median of 7 samples)
    and cached in ``microtable.json`` under the measurement key.

    Args:
        device: where to measure (the table model is meant for CPUs, where op times add up).
        dtype: the dtype of weights and activations.
        measure: replaces the real measurement, ``(kind, shape tuple) -> seconds`` (tests).
        persist: read and write the JSON cache (default: only when ``measure`` is not given).
        refresh: ignore stored points (re-measure each on first use, then overwrite).
    """

    def __init__(
        self,
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        *,
        measure: Callable[[str, tuple[int, ...]], float] | None = None,
        persist: bool | None = None,
        refresh: bool = False,
    ) -> None:
        self.device = device
        self.dtype = _resolve_dtype(dtype)
        self.key = measurement_key(device, self.dtype)
        self.persist = (measure is None) if persist is None else persist
        self._measure = measure or self._measure_op
        keep = self.persist and not refresh
        stored = _read_json("microtable.json").get(self.key, {}) if keep else {}
        self.points: dict[str, float] = dict(stored)
        self._dirty = False

    # ---- lookups -------------------------------------------------------------------------

    def gemm_s(self, m: int, k: int, n: int, bias: bool) -> float:
        """Seconds of ``F.linear`` on m rows of width k to width n (m = 0 costs nothing)."""
        if m <= 0:
            return 0.0
        cap = _cap_pow2(GRID_FLOPS_CAP / (2 * k * n))
        lo, hi = _pow2_bracket(m, cap)
        t0, t1 = (
            self._point("gemm", (lo, k, n, int(bias))),
            self._point("gemm", (hi, k, n, int(bias))),
        )
        if m > hi:
            return t1 * m / hi
        return _lerp(m, lo, hi, t0, t1)

    def sdpa_s(self, b: int, H: int, q: int, keys: int, dh: int, masked: bool = False) -> float:
        """Seconds of one SDPA call with b·H heads, q queries and ``keys`` keys of width d_h.

        ``masked``: with a boolean (q, keys) mask, as Eso-LM steps and the reference BD3-LM path
        pass (the CPU kernel converts it and computes dense: ≈ 15-20 % slower).
        """
        if q <= 0:
            return 0.0
        kind = "sdpa_mask" if masked else "sdpa"
        cap = _cap_pow2(math.sqrt(GRID_FLOPS_CAP / (4 * b * H * dh)))
        qc, kc = min(q, cap), min(keys, cap)
        q0, q1 = _pow2_bracket(qc, cap)
        k0, k1 = _pow2_bracket(kc, cap)

        def at(qq: int, kk: int) -> float:
            return self._point(kind, (b, H, qq, kk, dh))

        lo = _lerp(kc, k0, k1, at(q0, k0), at(q0, k1))
        hi = _lerp(kc, k0, k1, at(q1, k0), at(q1, k1))
        return _lerp(qc, q0, q1, lo, hi) * (q / qc) * (keys / kc)

    def step_mask_s(self, q: int, keys: int) -> float:
        """Seconds to build an Eso-LM step mask (``network.step_mask``) for q rows over ``keys``."""
        lo, hi = _pow2_bracket(max(keys, 1), 1 << 30)
        t0, t1 = self._point("step_mask", (q, lo)), self._point("step_mask", (q, hi))
        return _lerp(keys, lo, hi, t0, t1)

    def rotate_s(self, b: int, rows: int, H: int, dh: int) -> float:
        """Seconds of one rotary application (``network.rotate``) to (b, rows, H, d_h) rows.

        The reference BD3-LM path rotates Q and K of every cached row at every call; other paths
        rotate only the fed rows, which the per-token calibration already covers.
        """
        if rows <= 0:
            return 0.0
        lo, hi = _pow2_bracket(rows, 1 << 30)
        t0, t1 = self._point("rotate", (b, lo, H, dh)), self._point("rotate", (b, hi, H, dh))
        return _lerp(rows, lo, hi, t0, t1)

    def save(self) -> None:
        """Write newly measured points to the JSON cache (no-op when nothing is new)."""
        if self.persist and self._dirty:
            merged = {**_read_json("microtable.json").get(self.key, {}), **self.points}
            _merge_json("microtable.json", self.key, merged)
            self._dirty = False

    # ---- measurement ---------------------------------------------------------------------

    def _point(self, kind: str, shape: tuple[int, ...]) -> float:
        name = f"{kind}:{','.join(map(str, shape))}"
        if name not in self.points:
            if not self._dirty and self._measure == self._measure_op:
                _warn_if_loaded("op times", self.device)
            t = float(self._measure(kind, shape))
            for _ in range(TABLE_RETRIES):
                if not self._slower_than_half(kind, shape, t):
                    break
                t = min(t, float(self._measure(kind, shape)))
            self.points[name] = t
            self._dirty = True
        return self.points[name]

    def _slower_than_half(self, kind: str, shape: tuple[int, ...], t: float) -> bool:
        """Whether ``t`` is more than :data:`TABLE_SLACK` × twice the half-size op's time.

        An op on twice the rows (GEMM) or twice the queries or keys (SDPA) does twice the work
        at the same or better efficiency; a point that breaks this was measured during a burst
        of contention (memory bandwidth is shared even when CPU time is not) and is re-measured.
        """
        halves = []
        if kind == "gemm" and shape[0] > 1:
            halves.append((shape[0] // 2, *shape[1:]))
        elif kind.startswith("sdpa"):
            b, H, q, kk, dh = shape
            halves += [(b, H, q // 2, kk, dh)] if q > 1 else []
            halves += [(b, H, q, kk // 2, dh)] if kk > 1 else []
        for half in halves:
            ref = self.points.get(f"{kind}:{','.join(map(str, half))}")
            if ref is not None and t > TABLE_SLACK * 2 * ref:
                return True
        return False

    def _measure_op(self, kind: str, shape: tuple[int, ...]) -> float:
        dev, dt = self.device, self.dtype
        g = torch.Generator(device="cpu").manual_seed(0)

        def rnd(*s: int) -> torch.Tensor:
            return torch.randn(*s, generator=g).to(device=dev, dtype=dt)

        with torch.inference_mode():
            if kind == "gemm":
                m, k, n, bias = shape
                x, w, bvec = rnd(1, m, k), rnd(n, k), (rnd(n) if bias else None)
                fn: Callable[[], Any] = lambda: F.linear(x, w, bvec)  # noqa: E731
            elif kind == "step_mask":
                q, kk = shape
                start = max(kk - q, 0)
                fn = lambda: step_mask(start, q, torch.device(dev))  # noqa: E731
            elif kind == "rotate":
                b, rows, H, dh = shape
                # A Q (or K) view of the QKV cache buffer, as the reference path rotates it.
                x = rnd(b, rows, 3, H, dh)[:, :, 0]
                cos, sin = rnd(rows, 1, dh), rnd(rows, 1, dh)
                fn = lambda: rotate(x, cos, sin)  # noqa: E731
            else:
                b, H, q, kk, dh = shape
                qt = rnd(b, q, H, dh).transpose(1, 2)
                kt, vt = rnd(b, H, kk, dh), rnd(b, H, kk, dh)
                mask = torch.ones(q, kk, dtype=torch.bool, device=dev).tril(kk - q)
                mask = mask if kind == "sdpa_mask" else None
                fn = lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)  # noqa: E731
            return min(time_samples(fn, dev, samples=TABLE_SAMPLES))


# ---------------------------------------------------------------------------------------------
# Per-architecture calibration: fixed per-call overhead and per-token elementwise time
# ---------------------------------------------------------------------------------------------

CALIBRATION_TOKENS = 64
"""Fed tokens of the second calibration call (the first feeds one)."""

CALIBRATION_CURVE = (1, 2, 4, 16, 64, 512)
"""Fed tokens of the residual-curve calls (CPU). The time a call spends beyond its GEMMs,
attention and head (LayerNorm, AdaLN modulation, rotary, GELU, residuals, cache writes, the
final layer's ops, dispatch) is not affine in the fed tokens: on a few rows the fixed ops of the
head dominate, and above ≈ 64 rows the elementwise ops cross PyTorch's parallel grain and spread
over every thread (measured on the cpu-s DiT, 2 threads: 9 → 6 µs per token). Measured at these
points, with and without the head, and interpolated linearly. An affine fit through 1 and 64
tokens predicted a 512-token forward 10 % slow and a 4-token BD3-LM block call 12 % fast."""

CALIBRATION_WARMUP_S = 0.5
"""Seconds of untimed calls before a calibration is sampled (see :func:`_warm_up`)."""

CALIBRATION_FILE = "calibration-v2.json"
"""Cache file of :class:`CallCalibration` entries (v2: with the residual curve and step point)."""

CALIBRATION_SAMPLES = 15
"""Samples per calibration call (each ≥ 10 ms of repeated calls), taken in rounds of 3 spread
over ≈ 0.5 s; the call's time is their minimum, the machine's capability rather than its load
at one moment."""


@dataclass(frozen=True)
class CallCalibration:
    """Measured per-call costs of one architecture that no op table covers.

    Attributes:
        fixed_s: per-call fixed time: Python, dispatch of every op, tiny kernels.
        per_token_s: per fed token (per batch row) time of the elementwise work (LayerNorm,
            AdaLN modulation, rotary, GELU, residuals, cache writes) beyond the GEMMs, attention
            and head.
        one_token_s: measured time of a 1-token cached call (fed 1, keys 1, head 1).
        n_tokens: fed tokens of the second call (``forward_cached``, bidirectional, head on all).
        n_tokens_s: its measured time.
        device: where measured.
        dtype: the model's dtype.
        threads: torch threads during the measurement.
        load: 1-minute load average per usable CPU when measured (see :func:`machine_load`).
        clock: ``thread_time`` (CPU time, one thread) or ``perf_counter`` (wall); see
            :func:`measurement_clock`.
        curve_tokens: fed tokens of the residual curve (CPU; empty when not measured, and
            then ``fixed_s + per_token_s·n`` stands in for it).
        curve_head_s: residual seconds (measured − table ops) of a bidirectional cached call
            feeding n tokens with the head on every row, per ``curve_tokens`` entry.
        curve_store_s: the same without the head (store passes).
        step_extra_s: extra fixed time of an Eso-LM step call (a boolean step mask, rotary
            gathered by π, re-fed rows, head on the new rows only) over a plain 2-token call:
            measured on a (fed 2, keys 3, head 1) step call, its table ops and the curve's
            2-token residual subtracted. 0 for other families.
        step_call_s: that call's measured time.
    """

    fixed_s: float
    per_token_s: float
    one_token_s: float
    n_tokens: int
    n_tokens_s: float
    device: str
    dtype: str
    threads: int
    load: float = math.nan
    clock: str = "perf_counter"
    curve_tokens: tuple[int, ...] = ()
    curve_head_s: tuple[float, ...] = ()
    curve_store_s: tuple[float, ...] = ()
    step_extra_s: float = 0.0
    step_call_s: float = math.nan

    def residual_s(self, tokens: int, head: bool = True) -> float:
        """Seconds beyond the table's ops of a call feeding ``tokens`` rows (batch × fed).

        Linear between the curve's points; beyond the last, at its last segment's slope.
        """
        if len(self.curve_tokens) < 2:
            return self.fixed_s + self.per_token_s * tokens
        xs, ys = self.curve_tokens, self.curve_head_s if head else self.curve_store_s
        i = max(1, min(bisect.bisect_left(xs, tokens), len(xs) - 1))
        return _lerp(tokens, xs[i - 1], xs[i], ys[i - 1], ys[i])

    def overhead_s(self, rec: CallRecord) -> float:
        """The one-row residual of the call's kind, plus ``step_extra_s`` on an Eso-LM step."""
        step = self.step_extra_s if call_mask(rec) == "step" else 0.0
        return self.residual_s(1, head=rec[3] > 0) + step

    def elementwise_s(self, rec: CallRecord, batch_size: int) -> float:
        """The residual's growth from one row to the call's b × fed rows."""
        head = rec[3] > 0
        return self.residual_s(batch_size * rec[0], head) - self.residual_s(1, head)


def _config_key(cfg: DiTConfig) -> str:
    """The config fields that change the cost of a call."""
    keep = ("family", "vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim", "mlp_ratio")
    return ",".join(f"{k}={getattr(cfg, k)}" for k in keep)


def _same_device(a: str, b: str) -> bool:
    """``cuda`` and ``cuda:<current index>`` name the same device."""
    da, db = torch.device(a), torch.device(b)
    if da.type != db.type:
        return False
    if da.type == "cuda" and (da.index is None or db.index is None):
        cur = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (da.index if da.index is not None else cur) == (
            db.index if db.index is not None else cur
        )
    return da.index == db.index


def _model_device_dtype(model: Any) -> tuple[str, torch.dtype]:
    p = next(model.parameters())
    return str(p.device), p.dtype


def _warm_up(*fns: Callable[[], Any]) -> None:
    """Run ``fns`` in turn for :data:`CALIBRATION_WARMUP_S` seconds, untimed.

    A process's first calls (allocator growth, page faults, clock ramp-up) ran 40-50 % slow in
    every sample of a 0.5 s calibration.
    """
    t_end = time.perf_counter() + CALIBRATION_WARMUP_S
    while time.perf_counter() < t_end:
        for fn in fns:
            fn()


def _best_of_rounds(fns: dict[Any, Callable[[], Any]], device: str) -> dict[Any, float]:
    """Best seconds per call of each of ``fns``, after a common warm-up.

    The calls are sampled in turn, in rounds 50 ms apart, so a change of machine load affects
    all alike and a burst of contention does not fill every sample.
    """
    best = dict.fromkeys(fns, math.inf)
    _warm_up(*fns.values())
    for r in range(max(1, CALIBRATION_SAMPLES // 3)):
        if r:
            time.sleep(0.05)
        for k, fn in fns.items():
            best[k] = min(best[k], *time_samples(fn, device, sample_s=0.01, samples=3))
    return best


def _time_step_call(model: Any, device: str) -> float:
    """Best seconds of an Eso-LM step call: 2 rows fed after 1 cached, causal, head on 1.

    The call path of ``samplers.esolm.decode_cached`` at its second step (record (2, 2, 3, 1)),
    with rotary tables gathered by an order, as the sampler passes them.
    """
    cache = model.new_kv_cache(1, 3)
    order = torch.arange(3, device=device)[None]
    cos, sin = model.rotary_emb.tables(order)
    x = torch.full((1, 3), model.config.mask_id, dtype=torch.long, device=device)
    with torch.inference_mode():
        model.forward_cached(x[:, :1], cache, start=0, causal=True, rope=(cos[:, :1], sin[:, :1]))

        def step() -> Any:
            return model.forward_cached(
                x[:, 1:], cache, start=1, causal=True, rope=(cos[:, 1:], sin[:, 1:]), logits=1
            )

        return _best_of_rounds({"step": step}, device)["step"]


def _time_curve(
    model: Any, points: tuple[int, ...], device: str, kinds: tuple[str, ...] = ("head", "store")
) -> dict[str, list[float]]:
    """Best seconds of bidirectional cached calls feeding n ∈ ``points`` tokens.

    With the head on every row (``head``) and without it (``store``), sampled in interleaved
    rounds (:func:`_best_of_rounds`).
    """
    n_max = max(points)
    cache = model.new_kv_cache(1, n_max)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randint(0, model.config.vocab_size - 1, (1, n_max), generator=g).to(device)
    fns = {
        (kind, n): (
            lambda n=n, h=(kind == "head"): model.forward_cached(
                x[:, :n], cache, start=0, causal=False, return_logits=h
            )
        )
        for kind in kinds
        for n in points
    }
    with torch.inference_mode():
        best = _best_of_rounds(fns, device)
    return {kind: [best[(kind, n)] for n in points] for kind in kinds}


def machine_load() -> float:
    """1-minute load average per usable CPU (NaN where unknown); > 1 means oversubscribed."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        return os.getloadavg()[0] / usable
    except (AttributeError, OSError):
        return math.nan


def _warn_if_loaded(what: str, device: str = "cpu") -> float:
    load = machine_load()
    if load > 0.8 and measurement_clock(device) is time.perf_counter:
        warnings.warn(
            f"measuring {what} while the machine's load is {load:.1f} per CPU: the cached numbers "
            "will be slow. Re-measure on a quiet machine (refresh=True).",
            stacklevel=3,
        )
    return load


def calibrate_calls(
    model: Any,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    table: MicroTable | None = None,
    refresh: bool = False,
) -> CallCalibration:
    """Measure the per-call fixed overhead and per-token elementwise time of ``model``.

    Two calls of the architecture are timed: one feeding 1 token and one feeding
    :data:`CALIBRATION_TOKENS` tokens (bidirectional, head on every row). On CPU, where op times
    add up, the :class:`MicroTable` GEMM + attention + head time is subtracted from each, and the
    two residuals give ``fixed_s + per_token_s·n`` for n = 1 and 64. On CUDA, where the host
    enqueues kernels ahead of the device and the max-combined roofline applies, ``fixed_s`` is
    the 1-token latency itself (a DiT-small 1-token call computes ≈ 1 % of it) and
    ``per_token_s = 0``. On CPU the table prediction uses, instead of that affine pair, the
    residual curve over :data:`CALIBRATION_CURVE` fed tokens with and without the head, and,
    for Eso-LM, a step call with its boolean mask (``step_extra_s``). Cached per (machine,
    device, dtype, threads, architecture).

    Args:
        model: a :class:`~harness.model.network.DiT` in eval mode on ``device`` in ``dtype``
            (call ``freeze_conditioning()`` first, as samplers do).
        device: defaults to the model's device.
        dtype: defaults to the model's dtype.
        table: the op table (CPU); default ``MicroTable(device, dtype)``.
        refresh: measure again even if cached.

    Raises:
        ValueError: ``device``/``dtype`` disagree with where the model's weights are.
    """
    m_dev, m_dtype = _model_device_dtype(model)
    device = m_dev if device is None or _same_device(device, m_dev) else device
    dtype = _resolve_dtype(dtype) if dtype is not None else m_dtype
    if device != m_dev or dtype != m_dtype:
        raise ValueError(
            f"calibration asked for device={device!r} dtype={_dtype_name(dtype)}, but the model's "
            f"weights are on {m_dev} in {_dtype_name(m_dtype)}. Move the model first "
            "(model.to(device, dtype)) or pass matching arguments."
        )
    key = _calibration_key(model, device, dtype)
    cached = None if refresh else _cached_entry(key)
    if cached is not None:
        return cached
    n = CALIBRATION_TOKENS
    load = _warn_if_loaded(f"the call overhead of {_config_key(model.config)}", device)
    cpu = torch.device(device).type == "cpu"
    # One interleaved measurement: the 1- and n-token calls and, on CPU, the residual curve.
    pts = tuple(sorted({1, n, *CALIBRATION_CURVE})) if cpu else (1, n)
    times = _time_curve(model, pts, device, ("head", "store") if cpu else ("head",))
    t1, tn = times["head"][pts.index(1)], times["head"][pts.index(n)]
    cfg = model.config
    extra: dict[str, Any] = {}
    if cpu:
        table = table or MicroTable(device, dtype)
        res = {
            kind: [
                t - _table_ops_s(cfg, (m, m, m, m if kind == "head" else 0), 1, table)
                for m, t in zip(pts, ts, strict=True)
            ]
            for kind, ts in times.items()
        }
        r1, rn = res["head"][pts.index(1)], res["head"][pts.index(n)]
        per_tok = max(0.0, (rn - r1) / (n - 1))
        fixed = max(0.0, r1 - per_tok)
        extra.update(
            curve_tokens=pts,
            curve_head_s=tuple(itertools.accumulate(res["head"], max)),  # monotone in n
            curve_store_s=tuple(itertools.accumulate(res["store"], max)),
        )
        if cfg.family == "esolm":
            rec = (2, 2, 3, 1)
            t_step = _time_step_call(model, device)
            partial = CallCalibration(fixed, per_tok, t1, n, tn, device, "", 1, **extra)
            r_step = t_step - _table_ops_s(cfg, rec, 1, table) - partial.residual_s(2)
            extra.update(step_extra_s=max(0.0, r_step), step_call_s=t_step)
        table.save()
    else:  # CUDA: the host enqueues ahead of the device; the 1-token latency is the floor
        per_tok, fixed = 0.0, t1
    cal = CallCalibration(
        fixed,
        per_tok,
        t1,
        n,
        tn,
        device,
        _dtype_name(dtype),
        torch.get_num_threads(),
        load,
        measurement_clock(device).__name__,
        **extra,
    )
    _merge_json(CALIBRATION_FILE, key, asdict(cal))
    return cal


def _calibration_key(model: Any, device: str, dtype: torch.dtype) -> str:
    frozen = getattr(model, "_frozen", None) is not None or not model.config.adaln
    return f"{measurement_key(device, dtype)}|{_config_key(model.config)}|frozen={frozen}"


def _cached_entry(key: str) -> CallCalibration | None:
    cached = _read_json(CALIBRATION_FILE).get(key)
    known = {f.name for f in fields(CallCalibration)}
    if not cached or not set(cached) <= known:  # absent, or an older layout: re-measure
        return None
    curve = ("curve_tokens", "curve_head_s", "curve_store_s")
    return CallCalibration(**{k: tuple(v) if k in curve else v for k, v in cached.items()})


def cached_calibration(model: Any) -> CallCalibration | None:
    """This machine's stored :func:`calibrate_calls` result for ``model``, never measuring.

    ``None`` when nothing is cached for the model's architecture, device, dtype and threads.
    """
    device, dtype = _model_device_dtype(model)
    return _cached_entry(_calibration_key(model, device, dtype))


PREDICT_ENV = "DLMBENCH_PREDICT"
"""Environment variable choosing how a run fills ``predicted_s`` (:func:`prediction_policy`)."""

PREDICT_POLICIES = ("auto", "cached", "off")


def prediction_policy() -> str:
    """How runs predict: ``$DLMBENCH_PREDICT``, one of :data:`PREDICT_POLICIES` (default auto).

    * ``auto``: calibrate the architecture and measure missing op-table points on first use
      (cached per machine; ≈ 15 s per architecture on a quiet 2-core box, minutes on a busy one);
    * ``cached``: predict only from what this machine has already cached (calibration and every
      op-table point the cell needs), else leave ``predicted_s`` NaN — never measures;
    * ``off``: never predict (``predicted_s`` NaN).

    Raises:
        ValueError: an unknown value.
    """
    policy = os.environ.get(PREDICT_ENV, "auto").strip().lower() or "auto"
    if policy not in PREDICT_POLICIES:
        raise ValueError(f"${PREDICT_ENV} is {policy!r}; allowed: {', '.join(PREDICT_POLICIES)}.")
    return policy


class NotCached(LookupError):
    """A measurement that ``cached`` prediction needs is not in this machine's cache."""


def _refuse_to_measure(kind: str, shape: tuple[int, ...]) -> float:
    raise NotCached(f"op-table point {kind}:{','.join(map(str, shape))} is not cached")


def predict_for_run(
    model_cfg: DiTConfig,
    calls: Iterable[CallRecord],
    batch_size: int,
    peaks: Peaks,
    dtype_bytes: int,
    model: Any,
    policy: str | None = None,
) -> float:
    """A run's ``predicted_s``: :func:`predict_seconds` under :func:`prediction_policy`.

    With ``cached`` the calibration and op-table points come from this machine's cache only; a
    cell that would need any new measurement gets NaN instead of waiting for it.
    """
    policy = policy or prediction_policy()
    if policy == "off":
        return math.nan
    if policy == "auto":
        return predict_seconds(model_cfg, calls, batch_size, peaks, dtype_bytes, model=model)
    cal = cached_calibration(model)
    if cal is None:
        return math.nan
    table = None
    if peaks.is_cpu:
        table = MicroTable(peaks.device, peaks.dtype, measure=_refuse_to_measure, persist=True)
    try:
        return predict_seconds(
            model_cfg, calls, batch_size, peaks, dtype_bytes, calibration=cal, table=table
        )
    except NotCached:
        return math.nan


def call_overhead(
    model: Any, device: str | None = None, dtype: torch.dtype | str | None = None
) -> float:
    """The measured fixed per-call overhead (seconds) of this architecture on this machine.

    A 1-token call minus its modelled op time; see :func:`calibrate_calls` (cached per machine
    and model config). ``device`` and ``dtype`` default to the model's and must match them.
    """
    return calibrate_calls(model, device, dtype).fixed_s


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def _roofline_compute_s(
    cfg: DiTConfig, rec: CallRecord, batch_size: int, peaks: Peaks, dtype_bytes: int
) -> float:
    cc = call_cost(cfg, rec, batch_size, dtype_bytes)
    return max(cc.flops / peaks.flops_per_s, cc.bytes / peaks.bytes_per_s)


def _table_ops_s(cfg: DiTConfig, rec: CallRecord, batch_size: int, table: MicroTable) -> float:
    """Σ over the call's GEMMs, attention calls and head of the table's op times."""
    parts = _table_parts(cfg, rec, batch_size, table)
    return parts["linear_s"] + parts["attention_s"] + parts["head_s"]


def call_mask(rec: CallRecord) -> Literal["none", "step", "block"]:
    """Which attention mask a call runs with, inferred from the shape of its record.

    A record does not say (``samplers.base.CallRecord``), but the call paths leave a trace:

    * ``block``: more queries than fed rows, i.e. the reference BD3-LM QKV path, which re-attends
      every cached row under the prebuilt block-causal mask;
    * ``step``: an Eso-LM step after the first: clean rows re-fed before the new ones
      (0 < head rows < fed), a cached prefix (keys > fed) and more than one row, which
      ``forward_cached(causal=True)`` serves with a freshly built ``step_mask``;
    * ``none``: everything else (full bidirectional forwards, AR steps, efficient BD3-LM block
      and store calls, a first Eso-LM step with plain causal attention).

    Uncached oracle paths with a mask (BD3-LM without a cache) look like MDLM forwards and are
    taken as unmasked.
    """
    fed, q, keys, head = rec
    if q > fed:
        return "block"
    if fed > 1 and keys > fed and 0 < head < fed:
        return "step"
    return "none"


def _table_parts(
    cfg: DiTConfig, rec: CallRecord, batch_size: int, table: MicroTable
) -> dict[str, float]:
    fed, q, keys, head = rec
    b, N = batch_size, cfg.n_blocks
    mask = call_mask(rec)
    lin = N * sum(table.gemm_s(b * fed, k, n, bias) for k, n, bias in linear_shapes(cfg))
    att = N * table.sdpa_s(b, cfg.n_heads, q, keys, cfg.head_dim, masked=mask != "none")
    if mask == "step":
        att += table.step_mask_s(q, keys)
    if mask == "block":  # the reference path rotates Q and K of every row it re-attends
        att += N * 2 * table.rotate_s(b, q, cfg.n_heads, cfg.head_dim)
    hd = table.gemm_s(b * head, cfg.hidden_size, cfg.vocab_size, True)
    return {"linear_s": lin, "attention_s": att, "head_s": hd}


def predict_breakdown(
    model_cfg: DiTConfig,
    calls: Iterable[CallRecord],
    batch_size: int,
    peaks: Peaks,
    dtype_bytes: int,
    model: Any = None,
    *,
    method: Method = "auto",
    combine: Combine | None = None,
    calibration: CallCalibration | None = None,
    table: MicroTable | None = None,
) -> dict[str, float]:
    """:func:`predict_seconds` with its parts (seconds, summed over calls).

    Returns:
        ``predicted_s`` and, for ``table``: ``overhead_s``, ``elementwise_s``, ``linear_s``,
        ``attention_s``, ``head_s``; for ``roofline``: ``overhead_s``, ``compute_s``,
        ``memory_s`` (each summed over calls; ``predicted_s`` combines them per call).
        ``method`` and ``combine`` tell which model ran (as 1.0 flags ``method_table`` etc.).
    """
    counts = Counter(check_call(c) for c in calls)
    method = _pick_method(method, peaks, model, calibration)
    if method == "table":
        return _predict_table(model_cfg, counts, batch_size, peaks, model, calibration, table)
    combine = combine or ("sum" if peaks.is_cpu else "max")
    if combine not in ("sum", "max"):
        raise ValueError(f"combine is {combine!r}; allowed: 'sum' (CPU), 'max' (GPU).")
    overhead = peaks.call_overhead_s
    if calibration is None and model is not None:
        calibration = calibrate_calls(model)
    if calibration is not None:
        # The overhead that makes the model reproduce the measured 1-token call: t1 minus its
        # compute when they add up, t1 itself when the larger of the two wins.
        one = _roofline_compute_s(model_cfg, (1, 1, 1, 1), 1, peaks, dtype_bytes)
        t1 = calibration.one_token_s
        overhead = max(0.0, t1 - one) if combine == "sum" else t1
    out = {"predicted_s": 0.0, "overhead_s": 0.0, "compute_s": 0.0, "memory_s": 0.0}
    for rec, n in counts.items():
        cc = call_cost(model_cfg, rec, batch_size, dtype_bytes)
        comp, mem = cc.flops / peaks.flops_per_s, cc.bytes / peaks.bytes_per_s
        t = overhead + max(comp, mem) if combine == "sum" else max(comp, mem, overhead)
        for k, v in (("predicted_s", t), ("overhead_s", overhead), ("compute_s", comp)):
            out[k] += n * v
        out["memory_s"] += n * mem
    out[f"method_roofline_{combine}"] = 1.0
    return out


def _pick_method(method: str, peaks: Peaks, model: Any, calibration: CallCalibration | None) -> str:
    if method not in ("auto", "roofline", "table"):
        raise ValueError(f"method is {method!r}; allowed: 'auto', 'roofline', 'table'.")
    if method == "auto":
        return "table" if peaks.is_cpu and (model is not None or calibration) else "roofline"
    if method == "table" and model is None and calibration is None:
        raise ValueError(
            "method='table' needs the architecture's calibration: pass model= (measured and "
            "cached) or calibration=calibrate_calls(model)."
        )
    return method


def _predict_table(
    cfg: DiTConfig,
    counts: Counter,
    batch_size: int,
    peaks: Peaks,
    model: Any,
    calibration: CallCalibration | None,
    table: MicroTable | None,
) -> dict[str, float]:
    if not peaks.is_cpu:
        raise ValueError(
            f"method='table' measures op times on this CPU, but the peaks are for "
            f"{peaks.device!r}. Use method='roofline' for GPUs and other hardware."
        )
    table = table or MicroTable(peaks.device, peaks.dtype)
    cal = calibration or calibrate_calls(model, table=table)
    if cal.dtype != _dtype_name(table.dtype):
        raise ValueError(
            f"the calibration was measured in {cal.dtype} but the op table is {table.dtype}; "
            "build Peaks/MicroTable with the model's dtype (measure_peaks(device, model dtype))."
        )
    out = dict.fromkeys(
        ("predicted_s", "overhead_s", "elementwise_s", "linear_s", "attention_s", "head_s"), 0.0
    )
    for rec, n in counts.items():
        parts = _table_parts(cfg, rec, batch_size, table)
        parts["overhead_s"] = cal.overhead_s(rec)
        parts["elementwise_s"] = cal.elementwise_s(rec, batch_size)
        for k, v in parts.items():
            out[k] += n * v
            out["predicted_s"] += n * v
    table.save()
    out["method_table"] = 1.0
    return out


def predict_seconds(
    model_cfg: DiTConfig,
    calls: Iterable[CallRecord],
    batch_size: int,
    peaks: Peaks,
    dtype_bytes: int,
    model: Any = None,
    *,
    method: Method = "auto",
    combine: Combine | None = None,
    calibration: CallCalibration | None = None,
    table: MicroTable | None = None,
) -> float:
    """Predicted wall seconds of ``calls`` (network time only; sampling arithmetic excluded).

    Args:
        model_cfg: the network configuration.
        calls: call records per batch row.
        batch_size: b.
        peaks: device peaks (measured, or hand-built for other hardware).
        dtype_bytes: bytes per element for the byte model.
        model: the model itself; lets the per-call overhead be measured on this machine
            (:func:`calibrate_calls`) and, on CPU, selects the ``table`` model.
        method: ``auto`` (``table`` on CPU when ``model`` or ``calibration`` is given, else
            ``roofline``), ``roofline`` or ``table`` (see the module docstring).
        combine: roofline combination, ``sum`` (CPU default) or ``max`` (GPU default).
        calibration: a precomputed :class:`CallCalibration` (skips measuring).
        table: a :class:`MicroTable` to read op times from (default: this machine's, cached).

    Returns:
        Seconds; 0.0 for no calls.
    """
    return predict_breakdown(
        model_cfg,
        calls,
        batch_size,
        peaks,
        dtype_bytes,
        model,
        method=method,
        combine=combine,
        calibration=calibration,
        table=table,
    )["predicted_s"]
