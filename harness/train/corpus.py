"""The offline corpus: documents, the train/validation split, token streams and training rows.

The corpus (``data/corpus/corpus.jsonl.xz``, built by ``scripts/build_corpus.py``; provenance in
``data/README.md``) is a list of English documents from Project Gutenberg books, State of the
Union addresses, the Brown corpus and Shakespeare's works. The split is a fixed rule on each
document's id (:func:`is_validation`, about 2 % held out). Rows follow ``training.md`` §6.2:
documents joined with EOS, cut into L − 1 tokens, BOS prepended, so every row starts with BOS.

Tokenised streams are cached as ``.npy`` under ``.cache/tokens`` (git-ignored; the directory can
be moved with ``DLMBENCH_CACHE``), keyed by the hashes of the corpus and tokenizer files.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.train.tokenizer import REPO_ROOT, TextTokenizer

DEFAULT_CORPUS = REPO_ROOT / "data" / "corpus" / "corpus.jsonl.xz"
SPLITS = ("train", "validation")
VALIDATION_MODULUS = 50  # one document in 50 (2 %) is held out


@dataclass(frozen=True)
class Document:
    """One corpus document.

    Attributes:
        id: stable id ``source/title/chunk`` (the split key).
        source: ``gutenberg``, ``sotu``, ``brown`` or ``shakespeare``.
        title: book, address or Brown file name.
        text: plain text; paragraphs separated by a blank line.
    """

    id: str
    source: str
    title: str
    text: str


def is_validation(doc_id: str) -> bool:
    """The fixed split rule: SHA-256 of the id, first 8 hex digits, modulo 50 equals 0."""
    h = int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16)
    return h % VALIDATION_MODULUS == 0


def load_documents(path: str | os.PathLike[str] | None = None) -> list[Document]:
    """Read every document of the corpus file, in file order.

    Raises:
        FileNotFoundError: the corpus file is missing (it is committed; rebuild with
            ``scripts/build_corpus.py``).
    """
    p = Path(path) if path is not None else DEFAULT_CORPUS
    if not p.is_file():
        raise FileNotFoundError(
            f"corpus file {str(p)!r} not found; it ships in data/corpus/ "
            "(rebuild it with scripts/build_corpus.py)."
        )
    with lzma.open(p, "rt", encoding="utf-8") as f:
        return [Document(**json.loads(line)) for line in f if line.strip()]


def split_documents(docs: list[Document], split: str) -> list[Document]:
    """The documents of ``split`` (``train`` or ``validation``), in corpus order.

    Raises:
        ValueError: an unknown split name.
    """
    if split not in SPLITS:
        raise ValueError(f"split is {split!r}; allowed: {', '.join(SPLITS)}.")
    want_val = split == "validation"
    return [d for d in docs if is_validation(d.id) == want_val]


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    h.update(path.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where tokenised streams are cached (``DLMBENCH_CACHE`` or ``<repo>/.cache``)."""
    return Path(os.environ.get("DLMBENCH_CACHE", REPO_ROOT / ".cache")) / "tokens"


def token_stream(
    split: str,
    tokenizer: TextTokenizer,
    corpus: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """The split's documents tokenised and joined, each followed by EOS: ``d₁ EOS d₂ EOS …``.

    Args:
        split: ``train`` or ``validation``.
        tokenizer: the text tokenizer (its file hash keys the cache).
        corpus: corpus file; default the shipped one.
        use_cache: read/write the ``.npy`` cache.

    Returns:
        (n_tokens,) uint16 array.
    """
    corpus_path = Path(corpus) if corpus is not None else DEFAULT_CORPUS
    use_cache = use_cache and tokenizer.path is not None
    cached = None
    if use_cache:
        key = _file_hash(corpus_path) + _file_hash(Path(str(tokenizer.path))) + split
        cached = cache_dir() / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
        if cached.is_file():
            return np.load(cached)
    docs = split_documents(load_documents(corpus_path), split)
    ids = tokenizer.encode_batch([d.text for d in docs])
    stream = np.fromiter((t for doc in ids for t in [*doc, tokenizer.eos_id]), dtype=np.uint16)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, stream)
        tmp.rename(cached)
    return stream


def make_rows(stream: np.ndarray, seq_len: int, bos_id: int) -> np.ndarray:
    """Cut ``stream`` into L − 1 tokens per row and prepend BOS (``training.md`` §6.2).

    Args:
        stream: (n,) token ids.
        seq_len: L, the row length including BOS.
        bos_id: the BOS id.

    Returns:
        (n // (L − 1), L) int64 rows; the ragged tail is dropped.

    Raises:
        ValueError: ``seq_len`` < 2.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len is {seq_len}; rows need at least BOS plus one token (>= 2).")
    n_rows = len(stream) // (seq_len - 1)
    body = np.asarray(stream[: n_rows * (seq_len - 1)], dtype=np.int64).reshape(n_rows, -1)
    bos = np.full((n_rows, 1), bos_id, dtype=np.int64)
    return np.concatenate([bos, body], axis=1)  # (n_rows, L)


def iterate_batches(rows: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of rows: a fresh seeded permutation each epoch, partial batches dropped.

    Args:
        rows: (n, L) training rows.
        batch_size: b.
        seed: permutation seed; epoch e uses ``seed + e``.

    Yields:
        (b, L) int64 arrays.

    Raises:
        ValueError: fewer rows than one batch.
    """
    if len(rows) < batch_size:
        raise ValueError(f"{len(rows)} rows cannot fill one batch of {batch_size}.")
    epoch = 0
    while True:
        order = np.random.default_rng(seed + epoch).permutation(len(rows))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield rows[order[i : i + batch_size]]
        epoch += 1
