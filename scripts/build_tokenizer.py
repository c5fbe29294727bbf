"""Train the project tokenizer on the corpus's training split.

    /work/main/.venv/bin/python scripts/build_tokenizer.py [--out checkpoints/tokenizer]

Byte-level BPE, 8 192 ids including ``<|endoftext|>`` (id 0, BOS and EOS); see
``harness/train/tokenizer.py``. Only training documents are seen, so validation text stays unseen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.train.corpus import load_documents, split_documents
from harness.train.tokenizer import VOCAB_SIZE, train_tokenizer


def main(argv: list[str] | None = None) -> int:
    """Train and write ``tokenizer.json`` atomically."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("checkpoints/tokenizer"))
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args(argv)
    docs = split_documents(load_documents(), "train")
    tok = train_tokenizer((d.text for d in docs), args.vocab_size)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".tokenizer.json.tmp"
    tok.save(str(tmp))
    tmp.rename(args.out / "tokenizer.json")
    print(f"wrote {args.out / 'tokenizer.json'}: {tok.get_vocab_size()} ids from {len(docs)} docs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
