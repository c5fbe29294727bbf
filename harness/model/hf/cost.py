"""Analytic work of a sample on an ``hf:`` model, where it can be computed honestly (torch-free).

dlmbench's cost model (``harness/measure/costmodel.py``) counts a DiT's FLOPs and bytes layer by
layer and is calibrated on DiT micro-benchmarks; neither applies to an arbitrary Hugging Face
architecture. For an ``hf:`` model the runner reports instead (:func:`sample_cost`):

* ``flops_linear`` = 2 · P · (token-forwards of the batch), P the parameters stored in the
  safetensors files (``HFModelConfig.n_params``): the usual 2 FLOPs per parameter per token.
  The input embedding is counted although it is a lookup (it overstates by 2·V·d per token; tied
  heads are stored once and do their matmul), and a mixture of experts counts every expert.
* ``flops_attention`` = 4 · d · N per (query, key) pair, as for the DiT (QKᵀ and AV over N layers
  of width d), assuming full attention (local-window layers are overstated).
* ``flops_head`` = 0: the head is one of the P parameters.
* ``bytes_weights`` = P · s_w per call (s_w the bytes of ``hf.dtype``): every call reads every
  weight once. The cache, activation and logits traffic are not modelled: NaN, so
  ``bytes_analytic`` is NaN.

Each value is NaN where the config lacks what it needs (``.bin`` weights: no P). There is no
predicted time. :data:`FLOPS_METHOD` labels the rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from harness.model.hf.config import HFModelConfig

FLOPS_METHOD = "hf: 2*params per token-forward + 4*d*N per attention pair (full attention)"
"""The ``flops_method`` column of an ``hf:`` model's rows."""

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per weight of each ``hf.dtype``."""


def weights_in_memory(cfg: HFModelConfig) -> float:
    """Bytes the loaded weights take: P · bytes of ``hf.dtype``; the files' size without P."""
    if cfg.n_params is None:
        return float(cfg.weight_bytes)
    return float(cfg.n_params * DTYPE_BYTES[cfg.spec.options.dtype])


def sample_cost(cfg: HFModelConfig, calls: Iterable[Any], batch_size: int) -> dict[str, float]:
    """The columns ``costmodel.sample_cost`` gives, for an ``hf:`` model (module docstring).

    Args:
        cfg: the model's config.
        calls: ``SampleResult.calls``: (fed, queries, keys, head_rows) per batch row.
        batch_size: b.
    """
    counts = Counter(tuple(int(v) for v in c) for c in calls)
    b = batch_size
    fed = sum(n * c[0] for c, n in counts.items())
    pairs = sum(n * c[1] * c[2] for c, n in counts.items())
    n_calls = sum(counts.values())
    P = cfg.n_params
    d, N = cfg.hidden_size, cfg.n_blocks
    linear = math.nan if P is None else 2.0 * P * b * fed
    attention = math.nan if d is None or N is None else 4.0 * d * N * b * pairs
    per_call = [
        (2.0 * P * c[0] if P is not None else math.nan)
        + (4.0 * d * N * c[1] * c[2] if d is not None and N is not None else math.nan)
        for c in counts
    ]
    nan = math.nan
    flops = linear + attention
    return {
        "flops_linear": linear,
        "flops_attention": attention,
        "flops_head": 0.0,
        "bytes_weights": weights_in_memory(cfg) * n_calls if P is not None else nan,
        "bytes_kv": nan,
        "bytes_activations": nan,
        "bytes_logits": nan,
        "attn_pairs": float(pairs),
        "token_forwards": float(fed),
        "head_rows": float(sum(n * c[3] for c, n in counts.items())),
        "flops_analytic": flops,
        "bytes_analytic": nan,
        "n_calls": float(n_calls),
        "flops_per_call_mean": flops / n_calls if n_calls else nan,
        "flops_per_call_max": b * max(per_call) if per_call else nan,
    }
