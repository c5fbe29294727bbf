"""The quality stage: score the samples a run saved, once, outside any timed region.

``dlmbench quality RUN --evaluator SPEC`` reads ``samples/<cell_id>.pt`` of every finished
full-mode cell, decodes the ids with the model's tokenizer, scores them with the evaluator under a
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

from harness.quality.evaluators import decode_ids, load_evaluator, load_text_tokenizer
from harness.quality.metrics import PROTOCOLS, entropy_summary, generative_perplexity, mauve_score
from harness.results import atomic_write, load_results, load_samples, resolve_run


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
    tokens = load_samples(run_dir, row["cell_id"])
    mask_id = cfg["mask_index"] if cfg.get("mask_index") is not None else cfg["vocab_size"] - 1
    if bool((tokens == mask_id).any()):
        return {**out, "quality_status": "skipped: samples still hold mask tokens"}
    texts = decode_ids(load_text_tokenizer(tok_path), tokens, skip=set())
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
        if path.exists() and not force:
            rows.append(pd.read_parquet(path).iloc[0].to_dict())
            continue
        rec = score_cell(row, run_dir, evaluator, protocol, ref)
        frame = pd.DataFrame([rec])
        atomic_write(path, lambda p, f=frame: f.to_parquet(p, index=False))
        rows.append(rec)
    return pd.DataFrame(rows)


def load_quality(run_dir: str | Path, evaluator: str | None = None) -> pd.DataFrame:
    """The quality shards of a run (optionally of one evaluator name), one row per shard."""
    files = sorted((Path(run_dir) / "quality").glob("*.parquet"))
    frames = [pd.read_parquet(f) for f in files]
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
