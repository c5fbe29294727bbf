"""The task side of a task cell: examples → prompt batches, and answers → accuracy columns.

A task cell (``cell.task`` set, :class:`harness.run.experiment.TaskRef`) answers the prompts of
one task × level with its sampler. This module does the untimed parts; the runner plans and
times (:func:`harness.run.runner.measure_task_cell`):

1. :func:`load_examples` — the cell's examples (built-in generator or the task file).
2. :func:`prompt_batches` — each prompt tokenised as ``[BOS] prompt`` with the model's own
   tokenizer (:func:`load_tokenizer`; the layout the task models are trained on,
   ``docs/training-tasks.md``; an ``hf:`` model gets BOS only if its tokenizer adds one, and its
   chat template with ``hf.chat_template``), prompts of equal token length grouped (a sampler
   call takes one prompt length P, ``samplers/base.py``), each group cut into batches of at most
   ``cell.batch_size`` rows. The canvas of a batch is P + G′ tokens: G′ = ``seq_len`` (the
   generation length), rounded up for block samplers so that P + G′ fills whole blocks
   (:func:`gen_len`).
3. :func:`check_answers` — every returned canvas keeps its prompt and has no mask left.
4. :func:`score_batches` — the generated ids [P, P + G) decoded with the same tokenizer, cut at
   the first end marker (:func:`harness.tasks.scoring.predict_answer`; an ``hf:`` tokenizer adds
   its EOS text), compared with the reference by the task's scorer (:func:`verdicts`); accuracy
   with a percentile-bootstrap CI. Each answer record keeps the canvas's prompt ids and generated
   ids. :func:`accuracy` scores other answers to the same batches the same way (the exact path
   of an approximate-cache cell, ``agree_accuracy_delta``).

Parallelism: ``tokens_per_forward`` = G′ / (denoising calls per sequence), averaged over the
examples — the tokens committed per network call, the x-axis of accuracy under parallelism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlmcore.errors import UserError

if TYPE_CHECKING:
    from harness.run.experiment import Cell
    from harness.tasks.suite import Example
    from samplers.base import SampleResult

BOOTSTRAP_SAMPLES = 1000
"""Bootstrap resamples of the accuracy CI (percentile, 95 %)."""


class TaskCellError(UserError, ValueError):
    """A task cell cannot run as configured (message says what to change)."""


@dataclass
class PromptBatch:
    """Rows of one sampler call: examples whose prompts have the same token length.

    Attributes:
        examples: the batch's examples, in order.
        prompt: (b, P) int64 ids, ``[BOS] prompt`` per row (no BOS where the tokenizer has none).
        gen_len: G′, the generated positions after the prompt: the cell's generation length
            rounded up so that P + G′ is a multiple of the sampler's block size (block samplers).
    """

    examples: list[Example]
    prompt: torch.Tensor
    gen_len: int = 0

    @property
    def size(self) -> int:
        """b."""
        return int(self.prompt.shape[0])

    @property
    def prompt_len(self) -> int:
        """P."""
        return int(self.prompt.shape[1])


def load_examples(cell: Cell) -> list[Example]:
    """The examples of ``cell.task``: generated (built-in) or the first ``n`` of the file."""
    from harness.tasks import suite

    ref = cell.task
    if ref is None:
        raise TaskCellError("this cell has no task")
    if ref.file is not None:
        from harness.tasks.files import load_jsonl

        return load_jsonl(ref.file)[: ref.n]
    return suite.generate(ref.name, ref.level, ref.n, ref.seed)


def load_tokenizer(cell: Cell) -> Any:
    """The model's text tokenizer (``tokenizer`` in its config, as the quality stage finds it).

    ``hf:`` models: their own ``AutoTokenizer`` (:func:`harness.model.hf.tokenizer.text_tokenizer`).

    Raises:
        TaskCellError: the model names no tokenizer file, or it is not found.
        HFModelError: an ``hf:`` model's directory holds no loadable tokenizer.
    """
    from harness.model.hf.config import HFModelConfig
    from harness.quality.stage import resolve_tokenizer
    from harness.train.tokenizer import TextTokenizer

    if isinstance(cell.model_cfg, HFModelConfig):
        from harness.model.hf.tokenizer import text_tokenizer

        return text_tokenizer(cell.model_cfg)
    name = cell.model_cfg.tokenizer
    path = resolve_tokenizer(name, cell.ckpt.path)
    if path is None:
        raise TaskCellError(
            f"checkpoint '{cell.checkpoint}' names no tokenizer file that exists (config "
            f"'tokenizer': {name!r}); task prompts must be tokenised with the model's own "
            "tokenizer. Use a checkpoint that ships one (e.g. checkpoints/tasks-*)."
        )
    return TextTokenizer.from_file(path)


def block_size(cell: Cell) -> int | None:
    """The block size the canvas must be a multiple of (BD3-LM-style samplers), else None."""
    if not hasattr(cell.config, "block_size"):
        return None
    return cell.config.block_size or getattr(cell.model_cfg, "block_size", None)


def gen_len(prompt_len: int, gen: int, block: int | None) -> int:
    """G′ ≥ ``gen`` such that ``prompt_len`` + G′ is a multiple of ``block`` (if any)."""
    return gen + (-(prompt_len + gen) % block if block else 0)


def prompt_batches(
    examples: list[Example], tokenizer: Any, batch_size: int, gen: int = 0, block: int | None = None
) -> list[PromptBatch]:
    """Group ``[BOS] prompt`` ids by length (ascending), then cut groups into ≤ b rows.

    No BOS is put where ``tokenizer.bos_id`` is ``None`` (an ``hf:`` tokenizer that adds none).
    Each batch generates :func:`gen_len` ``(P, gen, block)`` positions.
    """
    groups: dict[int, list[tuple[Example, list[int]]]] = {}
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for ex in examples:
        ids = [*bos, *tokenizer.encode(ex.prompt)]
        groups.setdefault(len(ids), []).append((ex, ids))
    out = []
    for P in sorted(groups):
        rows = groups[P]
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            ids = torch.tensor([r[1] for r in chunk], dtype=torch.long)
            out.append(PromptBatch([r[0] for r in chunk], ids, gen_len(P, gen, block)))
    return out


def canvas_problems(batches: list[PromptBatch], cell: Cell) -> list[str]:
    """Why a canvas cannot hold some batch: too long for the model, or an empty prompt.

    A DiT's rotary positions stretch to 4× its training length; an ``hf:`` model takes at most
    its ``model_length`` positions (none checked where config.json gives none).
    """
    from harness.model.hf.config import HFModelConfig

    out = []
    longest = max((b.prompt_len for b in batches), default=0)
    shortest = min((b.prompt_len for b in batches), default=1)
    if shortest == 0:
        out.append(
            "a prompt tokenises to no ids and the tokenizer adds no BOS; give every example a "
            "non-empty prompt."
        )
    if isinstance(cell.model_cfg, HFModelConfig):
        limit = cell.model_cfg.model_length
        if limit is not None and longest + cell.seq_len > limit:
            out.append(
                f"the longest prompt ({longest} tokens) plus the generation length "
                f"{cell.seq_len} exceeds the {limit} positions of '{cell.ckpt.path}'; shorten "
                "seq_lens or the prompts."
            )
    elif longest + cell.seq_len > 4 * cell.model_cfg.model_length:
        out.append(
            f"the longest prompt ({longest} tokens) plus the generation length {cell.seq_len} "
            f"exceeds 4× the model's length {cell.model_cfg.model_length}; shorten seq_lens."
        )
    return out


def check_answers(batch: PromptBatch, result: SampleResult, cell: Cell) -> str | None:
    """Why ``result`` is not a complete answer to ``batch``, or None."""
    tok = result.tokens
    want = (batch.size, batch.prompt_len + batch.gen_len)
    if tuple(tok.shape) != want:
        return f"tokens have shape {tuple(tok.shape)}; expected {want}"
    if not torch.equal(tok[:, : batch.prompt_len].cpu(), batch.prompt):
        return "the prompt positions were changed"
    mask_id = cell.model_cfg.mask_id  # None: uniform corruption, no mask token
    if mask_id is not None and bool((tok == mask_id).any()):
        return f"{int((tok == mask_id).sum())} mask tokens are left"
    return None


def predictions(batch: PromptBatch, result: SampleResult, tokenizer: Any) -> list[str]:
    """The decoded answer of each row: generated ids cut at the first end marker."""
    return decode_answers(batch, result.tokens, tokenizer)


def decode_answers(batch: PromptBatch, tokens: torch.Tensor, tokenizer: Any) -> list[str]:
    """Each row's answer: ``tokens`` (b, P + G′) at [P, P + G′), cut at the first end marker."""
    from harness.tasks.scoring import END_MARKERS, predict_answer

    gen = tokens[:, batch.prompt_len :].cpu()
    stops = getattr(tokenizer, "stops", END_MARKERS)  # an hf: tokenizer adds its EOS text
    return [predict_answer(tokenizer.decode(row.tolist()), stops=stops) for row in gen]


def verdicts(batch: PromptBatch, tokens: torch.Tensor, tokenizer: Any) -> list[tuple[str, bool]]:
    """(prediction, correct) of each row of ``tokens`` (b, P + G′), by the task's scorer."""
    from harness.tasks import scoring

    preds = decode_answers(batch, tokens, tokenizer)
    return [
        (pred, bool(scoring.score(ex.task, pred, ex.answer, prompt=ex.prompt)))
        for ex, pred in zip(batch.examples, preds, strict=True)
    ]


def accuracy(batches: list[PromptBatch], tokens: list[torch.Tensor], tokenizer: Any) -> float:
    """Fraction of the examples that ``tokens`` answer right (NaN for none).

    ``tokens``: one (b, P + G′) tensor per batch, scored as :func:`score_batches` scores the cell.
    """
    correct = [
        ok
        for batch, tok in zip(batches, tokens, strict=True)
        for _, ok in verdicts(batch, tok, tokenizer)
    ]
    return sum(correct) / len(correct) if correct else math.nan


def score_batches(
    batches: list[PromptBatch], results: list[SampleResult], tokenizer: Any, cell: Cell
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy columns of the cell and one record per example (for the answers file)."""
    from harness.tasks import scoring

    records: list[dict[str, Any]] = []
    for batch, res in zip(batches, results, strict=True):
        tokens = res.tokens.cpu()
        scored = verdicts(batch, tokens, tokenizer)
        for ex, (pred, ok), row in zip(batch.examples, scored, tokens, strict=True):
            records.append(
                {
                    "id": ex.id,
                    "prompt": ex.prompt,
                    "answer": ex.answer,
                    "prediction": pred,
                    "correct": ok,
                    "prompt_tokens": batch.prompt_len,
                    "prompt_ids": row[: batch.prompt_len].tolist(),
                    "gen_ids": row[batch.prompt_len :].tolist(),
                }  # fmt: skip
            )
    correct = [r["correct"] for r in records]
    acc, lo, hi = scoring.accuracy_ci(correct, n_boot=BOOTSTRAP_SAMPLES, seed=cell.seed)
    cols = {
        "task": cell.task.name if cell.task else None,
        "level": cell.task.level if cell.task else None,
        "n_examples": len(records),
        "n_correct": int(sum(correct)),
        "accuracy": acc,
        "accuracy_lo": lo,
        "accuracy_hi": hi,
    }
    return cols, records


def parallelism_columns(
    batches: list[PromptBatch], results: list[SampleResult], wall_s: float, cell: Cell
) -> dict[str, Any]:
    """Generated tokens, calls per sequence, tokens per forward and generated tokens/s."""
    rows = sum(b.size for b in batches)
    gen_tokens = sum(b.size * b.gen_len for b in batches)
    nfe = [float(r.nfe_denoise) for r in results]
    per_row_nfe = sum(n * b.size for n, b in zip(nfe, batches, strict=True)) / rows
    tpf = sum(b.gen_len / n * b.size for n, b in zip(nfe, batches, strict=True) if n) / rows
    prompt_tokens = sum(b.size * b.prompt_len for b in batches)
    return {
        "gen_len": cell.seq_len,
        "gen_tokens": gen_tokens,
        "prompt_tokens_mean": prompt_tokens / rows,
        "n_batches": len(batches),
        "nfe_denoise_mean": per_row_nfe,
        "nfe_total_sum": int(sum(r.nfe_total for r in results)),
        "tokens_per_forward": tpf if tpf else math.nan,
        "gen_tokens_per_s": gen_tokens / wall_s if wall_s > 0 else math.nan,
        "s_per_example": wall_s / rows,
    }


def answers_path(run_dir: Path, cell_id: str) -> Path:
    """Where a task cell's per-example answers are written (JSONL)."""
    return run_dir / "answers" / f"{cell_id}.jsonl"


def write_answers(run_dir: Path, cell_id: str, records: list[dict[str, Any]]) -> str:
    """Write the per-example records atomically; return the path relative to ``run_dir``."""
    import json
    import os

    path = answers_path(run_dir, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return str(path.relative_to(run_dir))
