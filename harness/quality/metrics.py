"""Sample quality: generative perplexity, unigram entropy and MAUVE over stored samples.

Quality is computed once, in a separate stage that reads the token ids a run saved, never inside
a timed region (``quality-protocol.md``). Every number carries the protocol that produced it.

Generative perplexity, default protocol ``esolm`` (s-sahoo/Eso-LMs, MDLM and DUO use it):

1. **Decode** the generated ids with the model's tokenizer, keeping special tokens.
2. **Retokenize** with the evaluator's tokenizer, truncated to ``max_length`` (= L by default);
   pad each row to the longest row of its padding group with the evaluator's EOS; attention mask
   1 on real tokens, 0 on padding.
3. **Chunk** each row into consecutive, non-overlapping chunks of ``context`` tokens, each scored
   without context from the previous chunk (``long_sample="chunks"``), or slide a window of
   ``context`` tokens with ``stride``, scoring only the new positions (``"sliding"``, BD3-LM).
4. **Score** the cross-entropy of token j+1 given tokens ≤ j; a chunk's first token is never a
   target.
5. **EOS rule** (``eos_policy="count_first"``): a target counts if it is not EOS, or if it is the
   first EOS of the chunk (searched over the whole chunk, position 0 included). Tokens after the
   first EOS still count. ``exclude_all`` (BD3-LM) drops every EOS target; ``truncate_at_first``
   drops every target after the first EOS as well.
6. **Aggregate** over all samples weighted by tokens: Gen PPL = exp(Σ NLL / number of targets).

Worked example (``count_first``): a retokenized row ``A B <eos> C <eos> <pad=eos>`` has targets
B, eos₁, C, eos₂, pad. Valid: **B, eos₁, C** (3 tokens); eos₂ and the pad are excluded. A row
``A B`` padded to ``A B <pad=eos>`` counts B and the pad (its first EOS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

EosPolicy = Literal["count_first", "exclude_all", "truncate_at_first"]
LongSample = Literal["chunks", "sliding"]

HIGHER_IS_BETTER = {
    "gen_ppl": False,
    "gen_ppl_mean_per_sample": False,
    "gen_ppl_median_per_sample": False,
    "mauve": True,
}
"""Direction of every quality metric; frontier plots read this instead of guessing.

``entropy_nats`` has no better direction on purpose: low entropy flags repetitive samples, but
higher is not better."""


@dataclass(frozen=True)
class GenPPLProtocol:
    """A named, recorded Gen PPL setting (quality-protocol.md §3).

    Attributes:
        name: protocol name written to every row.
        eos_policy: ``count_first`` (Eso-LMs/MDLM/DUO), ``exclude_all`` (BD3-LM),
            ``truncate_at_first``.
        long_sample: ``chunks`` (non-overlapping, no carried context) or ``sliding``.
        context: chunk / window length in evaluator tokens; ``None`` = the evaluator's context.
            Always explicit in results, never inferred from a model name.
        stride: new positions scored per window after the first (``sliding`` only).
        max_length: retokenization truncation; ``None`` = the generated length L.
        pad_group: rows padded together (the reference scores one sampling batch at a time);
            ``None`` = all rows of a cell in one group.
        eval_batch_size: rows per evaluator forward.
    """

    name: str = "esolm"
    eos_policy: EosPolicy = "count_first"
    long_sample: LongSample = "chunks"
    context: int | None = None
    stride: int = 512
    max_length: int | None = None
    pad_group: int | None = None
    eval_batch_size: int = 8

    def problems(self) -> list[str]:
        """Value checks."""
        out = []
        if self.eos_policy not in ("count_first", "exclude_all", "truncate_at_first"):
            out.append(
                f"'eos_policy' is {self.eos_policy!r}; allowed: count_first, "
                "exclude_all, truncate_at_first."
            )
        if self.long_sample not in ("chunks", "sliding"):
            out.append(f"'long_sample' is {self.long_sample!r}; allowed: chunks, sliding.")
        for name in ("context", "max_length", "pad_group"):
            v = getattr(self, name)
            if v is not None and v < 2:
                out.append(f"'{name}' is {v}; it must be >= 2 or null.")
        if self.stride < 1 or self.eval_batch_size < 1:
            out.append("'stride' and 'eval_batch_size' must be >= 1.")
        return out


PROTOCOLS = {
    "esolm": GenPPLProtocol(),
    "bd3lm": GenPPLProtocol(name="bd3lm", eos_policy="exclude_all", long_sample="sliding"),
}
"""Named protocols: the Eso-LMs/MDLM/DUO default and the BD3-LM paper's variant."""


@runtime_checkable
class Evaluator(Protocol):
    """A causal LM that scores text.

    Attributes:
        name: recorded on every row (``evaluator``).
        revision: weights hash or revision (``evaluator_revision``).
        eos_id: the evaluator tokenizer's EOS (also its padding id).
        context: the longest sequence it scores at once.
    """

    name: str
    revision: str
    eos_id: int
    context: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize each text (no special tokens added)."""
        ...

    def token_nll(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """NLL of token j+1 given ≤ j: ids (b, n) int64 → (b, n−1) float64."""
        ...


# --------------------------------------------------------------------------------------------
# Generative perplexity
# --------------------------------------------------------------------------------------------


def target_mask(chunk: Tensor, eos_id: int, policy: EosPolicy) -> Tensor:
    """Which targets of a chunk count: (b, n) ids → (b, n−1) bool for targets 1 … n−1.

    ``count_first``: not EOS, or the first EOS of the chunk (searched from position 0, so a
    chunk starting with EOS has already used its first EOS). See the module's worked example.
    """
    is_eos = chunk == eos_id  # (b, n)
    first = is_eos & (is_eos.cumsum(dim=1) == 1)
    if policy == "count_first":
        valid = ~is_eos | first
    elif policy == "exclude_all":
        valid = ~is_eos
    elif policy == "truncate_at_first":
        before = is_eos.cumsum(dim=1) == 0  # strictly before the first EOS
        valid = before | first
    else:
        raise ValueError(
            f"eos_policy {policy!r}; allowed: count_first, exclude_all, truncate_at_first"
        )
    return valid[:, 1:]


def _windows(n: int, context: int, mode: LongSample, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored target index within the window) for a row of n tokens."""
    if mode == "chunks":
        return [(s, min(s + context, n), 0) for s in range(0, n, context)]
    out = [(0, min(context, n), 0)]
    end = out[0][1]
    while end < n:
        new_end = min(end + stride, n)
        start = max(0, new_end - context)
        out.append((start, new_end, end - start - 1))  # score only the new positions
        end = new_end
    return out


def _pad_group(rows: list[list[int]], eos_id: int) -> tuple[Tensor, Tensor]:
    """Pad rows to the longest with EOS → ids (b, n), attention mask (b, n)."""
    n = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), n), eos_id, dtype=torch.long)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        att[i, : len(r)] = 1
    return ids, att


def score_token_rows(
    rows: list[list[int]], evaluator: Evaluator, protocol: GenPPLProtocol
) -> tuple[np.ndarray, np.ndarray]:
    """Σ NLL and number of counted targets per row (padding groups, chunks, EOS rule applied).

    Args:
        rows: evaluator token ids per sample, already truncated.
        evaluator: the scorer.
        protocol: the Gen PPL protocol.

    Returns:
        (nll_sum (N,), n_targets (N,)) as float64 / int64 arrays.
    """
    context = protocol.context or evaluator.context
    group = protocol.pad_group or max(1, len(rows))
    nll_sum = np.zeros(len(rows), dtype=np.float64)
    count = np.zeros(len(rows), dtype=np.int64)
    for g0 in range(0, len(rows), group):
        ids, att = _pad_group(rows[g0 : g0 + group], evaluator.eos_id)
        for start, end, first_target in _windows(
            ids.shape[1], context, protocol.long_sample, protocol.stride
        ):
            chunk, chunk_att = ids[:, start:end], att[:, start:end]
            if chunk.shape[1] < 2:
                continue
            valid = target_mask(chunk, evaluator.eos_id, protocol.eos_policy)
            valid[:, :first_target] = False
            for b0 in range(0, chunk.shape[0], protocol.eval_batch_size):
                sl = slice(b0, b0 + protocol.eval_batch_size)
                nll = evaluator.token_nll(chunk[sl], chunk_att[sl]).double()
                v = valid[sl]
                rows_idx = np.arange(g0 + b0, g0 + b0 + v.shape[0])
                nll_sum[rows_idx] += (nll * v).sum(dim=1).numpy()
                count[rows_idx] += v.sum(dim=1).numpy()
    return nll_sum, count


def generative_perplexity(
    texts: Sequence[str],
    evaluator: Evaluator,
    protocol: GenPPLProtocol | None = None,
    *,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Gen PPL of decoded samples under ``evaluator`` (see the module docstring).

    Args:
        texts: decoded samples (special tokens kept).
        evaluator: the scoring LM.
        protocol: defaults to ``PROTOCOLS["esolm"]``.
        max_length: truncation in evaluator tokens when the protocol leaves it unset (= L).

    Returns:
        ``gen_ppl`` (corpus exp-mean), ``gen_ppl_mean_per_sample``, ``gen_ppl_median_per_sample``,
        ``n_samples``, ``n_valid_tokens``, ``nll_nats`` and the protocol fields.

    Raises:
        ValueError: no texts, or no countable target at all.
    """
    protocol = protocol or PROTOCOLS["esolm"]
    if not texts:
        raise ValueError("generative_perplexity needs at least one sample; got none.")
    limit = protocol.max_length or max_length
    rows = [r[:limit] if limit else r for r in evaluator.encode(list(texts))]
    nll_sum, count = score_token_rows(rows, evaluator, protocol)
    total = int(count.sum())
    if total == 0:
        raise ValueError(
            "no target token counted (all samples empty or EOS-only under "
            f"eos_policy={protocol.eos_policy!r})."
        )
    mean_nll = float(nll_sum.sum() / total)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_sample = np.exp(nll_sum / count)
    per_sample = per_sample[count > 0]
    return {
        "gen_ppl": math.exp(mean_nll),
        "nll_nats": mean_nll,
        "gen_ppl_mean_per_sample": float(per_sample.mean()),
        "gen_ppl_median_per_sample": float(np.median(per_sample)),
        "n_samples": len(rows),
        "n_valid_tokens": total,
        "evaluator": evaluator.name,
        "evaluator_revision": evaluator.revision,
        "gen_ppl_protocol": protocol.name,
        "eos_policy": protocol.eos_policy,
        "long_sample": protocol.long_sample,
        "eval_context": protocol.context or evaluator.context,
    }


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------


def unigram_entropy(ids: Tensor | np.ndarray) -> np.ndarray:
    """Per-sample unigram entropy in nats over the model-tokenizer ids: (N, L) → (N,).

    H = −Σ p_i ln p_i with p_i = count_i / L over the distinct ids of the sample.
    """
    arr = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids)
    out = np.empty(arr.shape[0], dtype=np.float64)
    for i, row in enumerate(arr):
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out[i] = float(-(p * np.log(p)).sum())
    return out


def entropy_summary(ids: Tensor | np.ndarray, threshold: float = 5.0) -> dict[str, float]:
    """``entropy_nats`` (mean over samples) and ``frac_entropy_below_5``."""
    h = unigram_entropy(ids)
    return {"entropy_nats": float(h.mean()), "frac_entropy_below_5": float((h < threshold).mean())}


# --------------------------------------------------------------------------------------------
# MAUVE
# --------------------------------------------------------------------------------------------


def mauve_score(
    p_features: np.ndarray | Tensor,
    q_features: np.ndarray | Tensor,
    seeds: Sequence[int] = (1, 2, 3),
    **kwargs: Any,
) -> dict[str, float]:
    """MAUVE between reference (p) and model (q) feature sets, mean ± std over k-means seeds.

    Uses the ``mauve-text`` package (optional extra ``dlmbench[mauve]``) with its defaults
    (clusters max(2, round(min(n_p, n_q)/10)), PCA, k-means, scaling factor 5). MAUVE moves with
    the k-means seed (krishnap25/mauve#11), hence the seeds. Values are comparable only within
    one featurizer setup: the features here come from the evaluator (mean-pooled final hidden
    states), not the paper's ModernBERT-large.

    Args:
        p_features: (n_p, d) features of held-out human text.
        q_features: (n_q, d) features of the samples.
        seeds: k-means seeds.
        **kwargs: passed to ``mauve.compute_mauve``.

    Returns:
        ``mauve`` (mean), ``mauve_std``, ``mauve_n_seeds``.

    Raises:
        ImportError: ``mauve-text`` is not installed (with the install command).
    """
    try:
        import mauve
    except ImportError:
        raise ImportError(
            "MAUVE needs the optional extra: pip install 'dlmbench[mauve]'."
        ) from None
    p = np.asarray(p_features.cpu() if isinstance(p_features, Tensor) else p_features)
    q = np.asarray(q_features.cpu() if isinstance(q_features, Tensor) else q_features)
    vals = [
        float(
            mauve.compute_mauve(p_features=p, q_features=q, seed=s, verbose=False, **kwargs).mauve
        )
        for s in seeds
    ]
    return {
        "mauve": float(np.mean(vals)),
        "mauve_std": float(np.std(vals)),
        "mauve_n_seeds": float(len(vals)),
    }
