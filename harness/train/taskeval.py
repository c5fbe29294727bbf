"""Exact greedy decoding of task answers and their exact-match accuracy (training validation).

The decoder fills the positions after the prompt, one token per network call, with the argmax
token under SUBS (the mask logit removed), and never changes a decoded token:

* **AR**: left to right, the next token from a causal forward.
* **MDLM, BD3-LM, Eso-LM (B)**: one token per step, chosen by the ``policy``:
  ``left_to_right`` decodes the first masked position after the prompt (the default: an answer
  of k tokens costs k + 1 calls); ``confidence`` decodes the masked position whose argmax has the
  highest probability (BD3-LM: within the first block that still has masks).

Each family's forward gives every masked position the logits it would have if it were decoded
next, in the family's own attention pattern:

* MDLM: the bidirectional forward over the row.
* BD3-LM: the block-causal forward over the row. Blocks before the current one are fully clean,
  so the current block's logits equal the noisy-half logits of the training input [z ; x].
* Eso-LM (B): a forward over the order π = (prompt in natural order, decoded tokens in decode
  order, masks in natural order), rotary positions gathered by π, causal among the clean tokens;
  each mask attends to every clean token and itself only (what the KV-cached sampler gives the
  first mask of a step).

A row stops when its answer is determined: an EOS is decoded with no mask between the prompt
and it; the answer is the text of the tokens before that EOS. ``max_steps`` caps the calls per
row; an unfinished row's answer is its decoded tokens up to the first mask. Exact match compares
that text with the gold answer, character for character.

Shapes: n = rows, L = row length, V = vocabulary including the mask.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from harness.tasks.scoring import score
from harness.tasks.suite import TASKS
from harness.train.taskdata import EncodedTasks, cell

POLICIES = ("left_to_right", "confidence")
Policy = Literal["left_to_right", "confidence"]


# ---------------------------------------------------------------------------------------------
# Per-family logits of the masked positions
# ---------------------------------------------------------------------------------------------


def esolm_decode_order(key: Tensor) -> Tensor:
    """π = argsort(key) per row, (n, L); key: prompt < decoded (by step) < masks (by position)."""
    return torch.argsort(key, dim=1, stable=True)


def esolm_step_mask(n_clean: Tensor, L: int) -> Tensor:
    """Eso-LM decoding attention mask over sorted indices, (n, 1, L, L) bool.

    Causal among the first n_c indices (the clean tokens); each later index (a mask) sees every
    clean index and itself.
    """
    i = torch.arange(L, device=n_clean.device)
    q, k = i[:, None], i[None, :]
    nc = n_clean[:, None, None]  # (n, 1, 1)
    clean_k = k < nc  # (n, 1, L)
    allowed = (clean_k & ((q >= nc) | (k <= q))) | (q == k)  # (n, L, L)
    return allowed[:, None]


def next_token_logits(
    model: Any, z: Tensor, family: str, key: Tensor | None = None, block_size: int | None = None
) -> Tensor:
    """Logits each position would get if it were decoded next, (n, L, V).

    Valid at the positions the decoder may pick: AR the first mask; BD3-LM the masks of the
    first block that has masks; MDLM and Eso-LM every mask.

    Args:
        model: the DiT (or a denoiser with the same ``forward``).
        z: current rows (n, L), masks at the undecoded positions.
        family: ``mdlm``, ``bd3lm``, ``esolm`` or ``ar``.
        key: Eso-LM order key (n, L) (:func:`esolm_decode_order`).
        block_size: BD3-LM L′.
    """
    n, L = z.shape
    if family == "ar":
        out = model(z, is_causal=True)  # (n, L, V): row j predicts position j + 1
        return torch.cat([out[:, :1], out[:, :-1]], dim=1)
    if family == "mdlm":
        return model(z, is_causal=False)
    if family == "bd3lm":
        if block_size is None:
            raise ValueError("bd3lm decoding needs the model's block_size.")
        return model(z, attn_mask=model.block_causal_mask(L, block_size, z.device))
    if family == "esolm":
        if key is None:
            raise ValueError("esolm decoding needs the order key.")
        order = esolm_decode_order(key)  # (n, L)
        n_clean = (z != model.config.mask_id).sum(1)  # (n,)
        out = model(
            z.gather(1, order), positions=order, attn_mask=esolm_step_mask(n_clean, L)
        )  # (n, L, V) in sorted order
        return torch.empty_like(out).scatter_(1, order[..., None].expand_as(out), out)
    raise ValueError(f"family is {family!r}; allowed: mdlm, bd3lm, esolm, ar.")


# ---------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------


def _first_at_or_after(hit: Tensor, start: Tensor) -> Tensor:
    """(n,) first position ≥ start[i] where ``hit`` (n, L) is True; L if none."""
    n, L = hit.shape
    pos = torch.arange(L, device=hit.device)[None]
    cand = hit & (pos >= start[:, None])
    return torch.where(cand, pos, torch.full_like(pos, L)).min(1).values


def answer_state(z: Tensor, prompt_len: Tensor, mask_id: int, eos_id: int) -> tuple[Tensor, Tensor]:
    """(first mask, first EOS) after the prompt, each (n,), L when absent."""
    return (
        _first_at_or_after(z == mask_id, prompt_len),
        _first_at_or_after(z == eos_id, prompt_len),
    )


def pick_positions(
    conf: Tensor, z: Tensor, prompt_len: Tensor, mask_id: int, policy: str, family: str, bs: int
) -> Tensor:
    """(n,) the position each row decodes now (see the module docstring for the rules)."""
    n, L = z.shape
    pos = torch.arange(L, device=z.device)[None]
    masked = (z == mask_id) & (pos >= prompt_len[:, None])  # (n, L)
    first = _first_at_or_after(z == mask_id, prompt_len)  # (n,)
    if family == "ar" or policy == "left_to_right":
        return first.clamp(max=L - 1)
    if family == "bd3lm":
        masked &= (pos // bs) == (first.clamp(max=L - 1) // bs)[:, None]
    score = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
    return score.argmax(1)


@torch.no_grad()
def greedy_decode(
    model: Any,
    rows: Tensor,
    prompt_len: Tensor,
    eos_id: int,
    max_steps: int | None = None,
    policy: str = "left_to_right",
) -> tuple[Tensor, Tensor]:
    """Decode the positions after each row's prompt, one argmax token per call.

    Args:
        model: the denoiser (its ``config`` gives family, mask id and block size).
        rows: (n, L); positions < prompt_len hold BOS and the prompt, the rest is ignored.
        prompt_len: (n,) P, each ≥ 1 (BOS).
        eos_id: the EOS id that ends an answer.
        max_steps: most calls per row (default L − min P).
        policy: ``left_to_right`` or ``confidence`` (diffusion families; AR is left to right).

    Returns:
        (z, steps): the decoded rows (n, L), masks where nothing was decoded, and the calls
        each row took (n,).

    Raises:
        ValueError: an unknown policy or family.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy is {policy!r}; allowed: {', '.join(POLICIES)}.")
    cfg = model.config
    family, mask_id = cfg.family, cfg.mask_id
    n, L = rows.shape
    pos = torch.arange(L, device=rows.device)[None]
    P = prompt_len.to(rows.device)
    z = torch.where(pos < P[:, None], rows, torch.full_like(rows, mask_id))
    key = torch.where(pos < P[:, None], pos - 2 * L, pos + 2 * L).to(torch.long)  # Eso-LM order
    steps = torch.zeros(n, dtype=torch.long, device=rows.device)
    limit = L - int(P.min()) if max_steps is None else max_steps
    for step in range(limit):
        first_mask, first_eos = answer_state(z, P, mask_id, eos_id)
        active = (first_eos > first_mask) & (first_mask < L)  # undetermined, something to decode
        if not active.any():
            break
        logits = next_token_logits(model, z, family, key, cfg.block_size).float()  # (n, L, V)
        logits[..., mask_id] = -float("inf")
        conf, tok = logits.log_softmax(-1).max(-1)  # (n, L)
        j = pick_positions(conf, z, P, mask_id, policy, family, cfg.block_size or L)  # (n,)
        r = active.nonzero().squeeze(1)
        z[r, j[r]] = tok[r, j[r]]
        key[r, j[r]] = step - L
        steps[r] += 1
    return z, steps


def answer_ids(z: Tensor, prompt_len: Tensor, mask_id: int, eos_id: int) -> list[list[int]]:
    """Per row, the decoded answer ids: after the prompt, before the first EOS or mask."""
    first_mask, first_eos = answer_state(z, prompt_len, mask_id, eos_id)
    end = torch.minimum(first_mask, first_eos)
    return [z[i, int(prompt_len[i]) : int(end[i])].tolist() for i in range(len(z))]


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------


def is_right(ex: Any, text: str) -> bool:
    """Whether the decoded answer ``text`` of example ``ex`` is right.

    Exact text match with the reference, or, for a built-in task with many right answers
    (``shuffle``), the task's own check against the prompt (``harness.tasks.scoring.score``).
    """
    spec = TASKS.get(ex.task) if ex.task in TASKS else None
    if spec is not None and spec.verify is not None:
        return score(spec, text, ex.answer, prompt=ex.prompt)
    return text == ex.answer


@dataclass
class TaskAccuracy:
    """Exact-match accuracy of greedy answers.

    Attributes:
        overall: fraction correct over every example.
        per_cell: ``"<task>:<level>"`` → fraction correct.
        n: examples.
        policy: the decoding policy.
        predictions: per example (id, decoded answer, correct).
    """

    overall: float
    per_cell: dict[str, float]
    n: int
    policy: str
    predictions: list[tuple[str, str, bool]]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no predictions)."""
        return {
            "overall": self.overall,
            "per_cell": self.per_cell,
            "n": self.n,
            "policy": self.policy,
        }


def task_accuracy(
    model: Any,
    enc: EncodedTasks,
    decode_text: Callable[[Sequence[int]], str],
    eos_id: int,
    policy: str = "left_to_right",
    batch_size: int = 64,
    extra_steps: int = 2,
) -> TaskAccuracy:
    """Greedy-decode every example of ``enc`` and score exact match against its answer.

    Left to right the budget is the longest gold answer (tokens) + 1 (EOS) + ``extra_steps``
    calls; with ``confidence`` it is the whole row after the prompt.

    Args:
        model: the denoiser, in eval mode with the weights to score.
        enc: the encoded held-out examples.
        decode_text: ids → text (``TextTokenizer.decode``).
        eos_id: the EOS id.
        policy: decoding policy for the diffusion families.
        batch_size: rows per decoding batch.
        extra_steps: budget beyond the longest answer and its EOS (left to right).
    """
    cfg = model.config
    budget = int(enc.answer_len.max()) + 1 + extra_steps if len(enc.examples) else 0
    max_steps = budget if (policy == "left_to_right" or cfg.family == "ar") else None
    preds: list[tuple[str, str, bool]] = []
    hits: dict[str, list[bool]] = defaultdict(list)
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    for i in range(0, len(enc.examples), batch_size):
        rows = torch.from_numpy(enc.rows[i : i + batch_size]).to(device)
        plen = torch.from_numpy(enc.prompt_len[i : i + batch_size]).to(device)
        z, _ = greedy_decode(model, rows, plen, eos_id, max_steps, policy)
        answers = answer_ids(z, plen, cfg.mask_id, eos_id)
        for ex, ids in zip(enc.examples[i : i + batch_size], answers, strict=True):
            text = decode_text(ids)
            ok = is_right(ex, text)
            preds.append((str(ex.id), text, ok))
            hits[":".join(cell(ex))].append(ok)
    per_cell = {k: sum(v) / len(v) for k, v in hits.items()}
    overall = sum(ok for *_, ok in preds) / len(preds) if preds else 0.0
    return TaskAccuracy(overall, per_cell, len(preds), policy, preds)
