"""The quality stage: score the samples a run saved, once, outside any timed region.

``dlmbench quality RUN --evaluator SPEC`` reads ``samples/<cell_id>.pt`` of every finished
full-mode cell, decodes the ids with the model's tokenizer (an ``hf:`` model's own
``AutoTokenizer``, :func:`decode_samples`), scores them with the evaluator under a
named Gen PPL protocol, computes unigram entropy (and MAUVE against held-out text if asked), and
writes one shard per (cell, evaluator): ``quality/<cell_id>__<evaluator>.parquet`` (atomic).
:func:`harness.results.load_results` joins these shards onto the cell rows.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.model import modelspec
from harness.quality.evaluators import decode_ids, load_evaluator, load_text_tokenizer
from harness.quality.metrics import PROTOCOLS, entropy_summary, generative_perplexity, mauve_score
from harness.results import (
    atomic_write,
    load_results,
    load_samples,
    move_aside,
    read_quality_shard,
    resolve_run,
)


def evaluator_slug(name: str) -> str:
    """A file-name-safe form of an evaluator name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def resolve_tokenizer(path: str | None, checkpoint_source: str | None) -> Path | None:
    """Find a tokenizer file named in a model config: as given, or beside the checkpoint."""
    if not path:
        return None
    p = Path(path)
    candidates = [p]
    if checkpoint_source and not p.is_absolute():
        src = Path(checkpoint_source)
        candidates += [src / p, src.parent / p, src.parent.parent / p]
    return next((c for c in candidates if c.exists()), None)


def score_cell(
    row: pd.Series,
    run_dir: Path,
    evaluator: Any,
    protocol_name: str,
    reference_features: Any = None,
) -> dict[str, Any]:
    """Quality columns of one cell (``quality_status`` says why a cell was not scored)."""
    out: dict[str, Any] = {
        "cell_id": row["cell_id"],
        "evaluator": evaluator.name,
        "gen_ppl_protocol": protocol_name,
    }
    cfg = json.loads(row["cell_config"])["model"]["config"]
    tok_path = resolve_tokenizer(cfg.get("tokenizer"), row.get("checkpoint_source"))
    if tok_path is None:
        return {
            **out,
            "quality_status": "skipped: the model names no tokenizer file "
            "(random-weight timing cells have no text)",
        }
    tokens = read_samples(run_dir, row)
    if isinstance(tokens, str):
        return {**out, "quality_status": tokens}
    mask_id = cfg["mask_index"] if cfg.get("mask_index") is not None else cfg["vocab_size"] - 1
    if bool((tokens == mask_id).any()):
        return {**out, "quality_status": "skipped: samples still hold mask tokens"}
    texts = decode_samples(row.get("checkpoint_source"), cfg, tok_path, tokens)
    out.update(
        generative_perplexity(
            texts, evaluator, PROTOCOLS[protocol_name], max_length=int(row["seq_len"])
        )
    )
    out.update(entropy_summary(tokens))
    if reference_features is not None:
        q = evaluator.features(texts, max_length=int(row["seq_len"]))
        out.update(mauve_score(reference_features, q))
    out["quality_status"] = "ok"
    return out


def decode_samples(
    source: str | None, cfg: dict[str, Any], tok_path: Path, tokens: torch.Tensor
) -> list[str]:
    """(b, L) ids → texts with the model's own tokenizer, special tokens kept.

    An ``hf:`` checkpoint's ids decode with its ``AutoTokenizer``
    (:func:`harness.model.hf.tokenizer.text_tokenizer`, from the directory and the options the
    cell recorded); any other with the ``tokenizer.json`` its config names.
    """
    if isinstance(source, str) and modelspec.is_hf(source):
        from harness.model.hf.tokenizer import text_tokenizer

        tok = text_tokenizer(modelspec.hf_config(source, cfg["spec"]["options"]))
        return decode_ids(tok.hf, tokens, skip=set())
    return decode_ids(load_text_tokenizer(tok_path), tokens, skip=set())


def read_samples(run_dir: Path, row: pd.Series) -> torch.Tensor | str:
    """The cell's saved token ids, or the ``quality_status`` saying why there are none.

    ``skipped: ...`` when the cell saved no samples or the file is missing; ``error: ...`` when
    the file cannot be read (corrupt, cut short) or is not ``(b, L)`` integer ids.
    """
    rel = f"samples/{row['cell_id']}.pt"
    saved = row.get("samples_file")
    if not isinstance(saved, str) or not saved:
        return (
            f"skipped: the cell saved no samples ({rel}); run it with timing.save_samples: true "
            "(and timing.mode: full), then rerun dlmbench quality"
        )
    if not (run_dir / rel).exists():
        return f"skipped: the samples file {rel} is missing; re-run the cell to save it again"
    try:
        tokens = load_samples(run_dir, row["cell_id"])
    except Exception as e:  # noqa: BLE001 -- a corrupt file is this cell's problem only
        return f"error: the samples file {rel} cannot be read ({type(e).__name__}: {e})"
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        what = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        return f"error: the samples file {rel} holds {what}, not (b, L) integer token ids"
    return tokens


def score_or_record(
    row: pd.Series, run_dir: Path, evaluator: Any, protocol_name: str, reference_features: Any
) -> dict[str, Any]:
    """:func:`score_cell`, or a row whose ``quality_status`` is the error (the run goes on)."""
    try:
        return score_cell(row, run_dir, evaluator, protocol_name, reference_features)
    except Exception as e:  # noqa: BLE001 -- one cell that cannot be scored spares the others
        return {
            "cell_id": row["cell_id"],
            "evaluator": evaluator.name,
            "gen_ppl_protocol": protocol_name,
            "quality_status": f"error: {type(e).__name__}: {e}",
        }


def score_run(
    run: str | Path,
    evaluator_spec: str,
    *,
    protocol: str = "esolm",
    reference_texts: Sequence[str] | None = None,
    force: bool = False,
    device: str = "cpu",
) -> pd.DataFrame:
    """Score every finished full-mode cell of a run; returns the quality rows written.

    A cell that cannot be scored (no samples saved, a missing or corrupt samples file, an
    evaluator error) gets a row whose ``quality_status`` says why (``skipped: ...`` or
    ``error: ...``); the other cells are scored all the same.

    Args:
        run: run folder, run id or experiment name.
        evaluator_spec: ``dit:<dir>``, ``hf:<dir>`` or ``gguf:<file>``.
        protocol: a key of :data:`harness.quality.metrics.PROTOCOLS`.
        reference_texts: held-out human text for MAUVE (``None`` skips MAUVE).
        force: re-score cells that already have a shard for this evaluator.
        device: where the evaluator runs.

    Raises:
        ValueError: unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Gen PPL protocol '{protocol}'; known: {sorted(PROTOCOLS)}.")
    run_dir = resolve_run(str(run))
    evaluator = load_evaluator(evaluator_spec, device=device)
    slug = evaluator_slug(evaluator.name)
    ref = evaluator.features(reference_texts) if reference_texts else None
    df = load_results(run_dir)
    todo = df[(df["status"] == "ok") & (df["timing_mode"] == "full")]
    (run_dir / "quality").mkdir(exist_ok=True)
    rows = []
    for _, row in todo.iterrows():
        path = run_dir / "quality" / f"{row['cell_id']}__{slug}.parquet"
        old = read_quality_shard(path) if path.exists() and not force else None
        if old is not None and len(old):
            rows.append(old.iloc[0].to_dict())
            continue
        if path.exists() and not force:  # unreadable: keep it for inspection, score again
            move_aside(path, "re-scoring the cell")
        rec = score_or_record(row, run_dir, evaluator, protocol, ref)
        frame = pd.DataFrame([rec])
        atomic_write(path, lambda p, f=frame: f.to_parquet(p, index=False))
        rows.append(rec)
    return pd.DataFrame(rows)


def load_quality(run_dir: str | Path, evaluator: str | None = None) -> pd.DataFrame:
    """The quality shards of a run (optionally of one evaluator name), one row per shard."""
    files = sorted((Path(run_dir) / "quality").glob("*.parquet"))
    frames = [f for f in (read_quality_shard(p) for p in files) if f is not None]
    if not frames:
        return pd.DataFrame(columns=["cell_id", "evaluator"])
    q = pd.concat(frames, ignore_index=True)
    return q if evaluator is None else q[q["evaluator"] == evaluator]


def heldout_references(n: int = 256, chars: int = 600) -> list[str]:
    """Held-out human text for MAUVE: the first ``chars`` characters of validation documents.

    The validation split of the offline corpus is never trained on; about 600
    characters ≈ 128 tokens of our BPE, the demo's sample length.
    """
    from harness.train.corpus import load_documents, split_documents

    docs = split_documents(load_documents(), "validation")
    texts = [d.text[i : i + chars] for d in docs for i in range(0, len(d.text) - chars, chars)]
    return texts[:n]


def cmd_quality(args: argparse.Namespace) -> int:
    """``dlmbench quality RUN --evaluator SPEC``."""
    refs = None
    if args.mauve_reference:
        refs = [t for t in Path(args.mauve_reference).read_text().split("\n\n") if t.strip()]
    elif args.mauve:
        refs = heldout_references()
    out = score_run(
        args.run,
        args.evaluator,
        protocol=args.protocol,
        reference_texts=refs,
        force=args.force,
        device=args.device,
    )
    cols = [
        c
        for c in ("cell_id", "gen_ppl", "entropy_nats", "mauve", "n_valid_tokens", "quality_status")
        if c in out.columns
    ]
    print(out[cols].to_string(index=False) if len(out) else "no full-mode cells to score")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``quality``."""
    p = subparsers.add_parser(
        "quality", help="score a run's saved samples (Gen PPL, entropy, MAUVE) with an evaluator"
    )
    p.add_argument("run", help="run folder, run id or experiment name")
    p.add_argument(
        "--evaluator",
        required=True,
        help="dit:<AR checkpoint dir> | hf:<local HF dir> | gguf:<dir>/<file>.gguf",
    )
    p.add_argument("--protocol", default="esolm", choices=sorted(PROTOCOLS))
    p.add_argument(
        "--mauve",
        action="store_true",
        help="also compute MAUVE against held-out corpus text (optional extra dlmbench[mauve])",
    )
    p.add_argument(
        "--mauve-reference",
        default=None,
        help="text file of reference documents separated by blank lines (implies --mauve)",
    )
    p.add_argument("--force", action="store_true", help="re-score cells already scored")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=cmd_quality)
    return p
