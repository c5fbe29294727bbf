"""Time dlmbench's cached calls against the official reference code, side by side (not in CI).

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_reference.py                       # clone, then time
    python scripts/bench_reference.py --reference-dir ~/src/refs --sizes tiny # local checkouts
    python scripts/bench_reference.py --sizes small --repeats 9 --out results/bench_reference.md

The reference code is never copied into this tree. With ``--reference-dir DIR`` the checkouts
``DIR/bd3lms`` and ``DIR/Eso-LMs`` are used as they are (their commit is recorded); otherwise
kuleshov-group/bd3lms and s-sahoo/Eso-LMs are cloned from GitHub at the pinned commits below into
``~/.cache/dlmbench/reference/`` (``--cache-dir``). Their ``models/dit.py`` are imported from
there; what a CPU forward does not need is stubbed in this process only (``omegaconf``,
``flash_attn``); ``einops`` is the real package (installed with pip into the cache folder when
missing). ``torch.set_float32_matmul_precision`` is restored after the Eso-LMs import (it sets
``"high"``), so both sides compute in full fp32.

Both sides get the same random weights (dlmbench's seeded ``random:<size>`` DiT; the parameter
names are the reference's, so the state dict maps one to one) and the same cache contents
(Eso-LMs fills its cache with its own prefill call; the AR and bd3lms caches get dlmbench's rows,
in their layout), and each pair of calls must return the same logits (max |Δ| is in the table)
before it is timed.

What is timed, at 1 thread, batch 1, fp32, V = 50 258, L = ``--length`` (default 1024, the
bd3lms cache length), the cache half full (n = L/2 committed rows), one call each:

* ``eso_step``: the Eso-LM (B) cached step (k_prev = 1, k = 1: 2 fed rows), dlmbench
  ``forward_cached`` vs Eso-LMs ``EsoLMDiT.forward_sample``.
* ``ar_step``: one AR token against the cache, dlmbench ``forward_cached`` vs the Eso-LMs AR
  ``DiT.forward(kv_cache=True)``.
* ``bd3_eff_L′`` / ``bd3_ref_L′`` (L′ = 4, 16): one BD3-LM denoising call on the block after
  the cached prefix, dlmbench ``forward_cached`` (efficient) and ``forward_cached_reference``
  (``cache: reference``) vs bd3lms ``DIT.forward(sample_mode=True)`` with its KV cache.
* ``floor``: the weight-bandwidth floor of the Eso-LM step, the time to stream once every
  tensor the step reads (all weights, the head, the K/V rows it attends), one ``amax`` each.

Calls are interleaved (dlmbench, reference and, for the Eso-LM and AR steps, the floor, in a
shuffled order each round) after a warm-up; each side's median wall time and thread CPU time over
the repeats, their ratio, and the CPU time other processes took from our cores during the case
(``others_cores``, as ``dlmbench check-machine`` measures it) go into a markdown table (``--out``,
default ``results/bench_reference.md``), followed by the weight layouts and products that
dlmbench's networks measured (``harness.model.skinny``). Run ``dlmbench check-machine`` before
and after to record the contention next to the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import random
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from harness.measure.contention import ContentionMeter  # noqa: E402
from harness.model import skinny  # noqa: E402
from harness.model.checkpoints import build_random_model  # noqa: E402
from harness.model.network import DiT, block_causal_mask  # noqa: E402

REFERENCES = {
    # name: (public source, pinned commit)
    "bd3lms": (
        "https://github.com/kuleshov-group/bd3lms.git",
        "1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7",
    ),
    "Eso-LMs": (
        "https://github.com/s-sahoo/Eso-LMs.git",
        "92e7982373bc05779ba90d93be3d5760f02469a1",
    ),
}
EINOPS = "einops==0.8.1"
VOCAB = 50258  # GPT-2 + mask, as the papers
BATCH = 1
SIZES = ("tiny", "small")
BLOCKS = (4, 16)


class BenchError(RuntimeError):
    """A setup problem of this script (missing checkout, mismatching outputs)."""


# ---------------------------------------------------------------------------------------------
# The reference code: checkouts and imports
# ---------------------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git, return its stdout; a failure is a one-line :class:`BenchError`."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        msg = getattr(e, "stderr", "") or str(e)
        raise BenchError(f"git {' '.join(args)} failed: {msg.strip()}") from None
    return out.stdout.strip()


def checkout(name: str, reference_dir: Path | None, cache_dir: Path, url: str | None) -> Path:
    """A checkout of reference ``name``: ``reference_dir/name`` as is, or a pinned clone."""
    source, commit = REFERENCES[name]
    if reference_dir is not None:
        path = reference_dir / name
        if not (path / "models" / "dit.py").is_file():
            raise BenchError(
                f"--reference-dir {reference_dir}: no {name}/models/dit.py there; expected a "
                f"checkout of {source} (commit {commit}) at {path}."
            )
        return path
    path = cache_dir / f"{name}-{commit[:12]}"
    if not (path / "models" / "dit.py").is_file():
        tmp = path.with_name(path.name + ".partial")
        if tmp.exists():
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"cloning {url or source} at {commit[:12]} into {path}", flush=True)
        git("clone", "--quiet", "--no-checkout", url or source, str(tmp))
        git("checkout", "--quiet", commit, cwd=tmp)
        tmp.rename(path)
    return path


def ensure_einops(cache_dir: Path, install: bool) -> str:
    """Import the real einops, pip-installing it into the cache folder if it is missing."""
    lib = cache_dir / "pylib"
    if lib.is_dir() and str(lib) not in sys.path:
        sys.path.append(str(lib))
    try:
        import einops
    except ImportError:
        if not install:
            raise BenchError(
                f"the reference code needs einops; pip install {EINOPS} (or drop --no-install)"
            ) from None
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(lib), EINOPS]
        subprocess.run(cmd, check=True)
        if str(lib) not in sys.path:
            sys.path.append(str(lib))
        import einops
    return einops.__version__


def stub_module(name: str, **attrs: Any) -> None:
    """Register an empty module ``name`` unless the real one imports."""
    try:
        importlib.import_module(name)
    except ImportError:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


def import_dit(path: Path, alias: str) -> types.ModuleType:
    """Import ``path/models/dit.py`` as module ``alias``, undoing its global fp32-matmul switch."""
    stub_module("omegaconf", OmegaConf=NS(create=lambda d: d))
    stub_module("huggingface_hub", PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {}))
    precision = torch.get_float32_matmul_precision()
    spec = importlib.util.spec_from_file_location(alias, path / "models" / "dit.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[alias] = mod
    spec.loader.exec_module(mod)
    torch.set_float32_matmul_precision(precision)  # Eso-LMs sets "high" (TF32 on GPUs)
    return mod


def commit_of(path: Path) -> str:
    """The checkout's commit, or "unknown" when it is not a git work tree."""
    try:
        return git("rev-parse", "HEAD", cwd=path)[:12]
    except BenchError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Reference networks with dlmbench's weights
# ---------------------------------------------------------------------------------------------


def ref_config(ours: DiT, *, causal: bool, block_size: int = 1) -> NS:
    """The attribute tree the reference constructors read (hydra configs in the originals)."""
    c = ours.config
    model = NS(
        hidden_size=c.hidden_size, cond_dim=c.cond_dim, n_heads=c.n_heads, n_blocks=c.n_blocks,
        length=c.model_length, dropout=0.0, scale_by_sigma=False, attn_backend="sdpa",
        tie_word_embeddings=False,
    )  # fmt: skip
    algo = NS(
        causal_attention=causal, parameterization="ar" if causal else "subs", cross_attn=True,
        diffusion_attn_mode="causal", sequential_attn_mode="causal", prepend_token="none",
    )  # fmt: skip
    return NS(
        model=model, algo=algo, block_size=block_size, attn=NS(dynamic_shape=False),
        loader=NS(eval_batch_size=BATCH), sampling=NS(kv_cache=True),
    )  # fmt: skip


def load_weights(ref: torch.nn.Module, ours: DiT) -> torch.nn.Module:
    """Copy dlmbench's state dict into the reference network (same names; inv_freq is theirs)."""
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    extra = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if extra or unexpected:
        raise BenchError(f"state dicts differ: missing {extra}, unexpected {unexpected}")
    return ref.eval()


# ---------------------------------------------------------------------------------------------
# Cases: (dlmbench call, reference call, state reset), checked equal before timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One call timed on both sides (``ref`` None: a dlmbench-only measurement)."""

    size: str
    name: str
    ours: Callable[[], Any]
    ref: Callable[[], Any] | None
    reset: Callable[[], None] = lambda: None
    max_diff: float = math.nan
    result: dict[str, float] = field(default_factory=dict)


def tokens(n: int, seed: int) -> torch.Tensor:
    """(b, n) random ids, never the mask."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB - 2, (BATCH, n), generator=g)


def compare(case: Case) -> Case:
    """Run both sides once; record max |Δ| of the logits; refuse a case that disagrees."""
    with torch.inference_mode():
        case.reset()
        a = case.ours()
        case.reset()
        b = case.ref()
    if a.shape != b.shape:
        raise BenchError(f"{case.size} {case.name}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    case.max_diff = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    if not case.max_diff <= 1e-4 * max(1.0, scale):
        raise BenchError(f"{case.size} {case.name}: outputs differ by {case.max_diff:.3g}")
    return case


def eso_cases(size: str, L: int, mods: dict[str, types.ModuleType]) -> list[Case]:
    """The Eso-LM step, the AR step and the floor of the Eso-LM step."""
    ours = build_random_model(size, "esolm", vocab_size=VOCAB, model_length=L, seed=0).model
    M, n_c = ours.config.mask_id, L // 2 - 1
    ref = mods["Eso-LMs"].EsoLMDiT(ref_config(ours, causal=False), VOCAB, M)
    ref = load_weights(ref, ours)
    pi = torch.randperm(L, generator=torch.Generator().manual_seed(1))[None]
    truth = tokens(L, 2)
    with torch.inference_mode():
        cos, sin = ours.rotary_emb.tables(pi)
        cache = ours.new_kv_cache(BATCH, L)
        ours.forward_cached(
            truth[:, :n_c], cache, start=0, causal=True, rope=(cos[:, :n_c], sin[:, :n_c]),
            return_logits=False,
        )  # fmt: skip
        fed = torch.cat([truth[:, n_c : n_c + 1], torch.full((BATCH, 1), M)], 1)
        rope = (cos[:, n_c : n_c + 2], sin[:, n_c : n_c + 2])
        zt = torch.cat([truth[:, : n_c + 1], torch.full((BATCH, L - n_c - 1), M)], 1)
        ref.reset_kv_cache()
        ref.reset_sorted_rotary_cache()
        ref.forward_sample(zt, pi, last_k_start=0, curr_k_start=n_c, curr_k_end=n_c)

    def reset() -> None:
        for blk in ref.blocks:
            blk.num_clean_cached = n_c

    eso = Case(
        size, "eso_step",
        lambda: ours.forward_cached(fed, cache, start=n_c, causal=True, rope=rope, logits=1),
        lambda: ref.forward_sample(
            zt, pi, last_k_start=n_c, curr_k_start=n_c + 1, curr_k_end=n_c + 2
        ),
        reset,
    )  # fmt: skip
    end = n_c + 2
    reads = [p for n, p in ours.named_parameters() if "adaLN" not in n and "sigma_map" not in n]
    reads = [p for p in reads if p is not ours.vocab_embed.embedding]
    reads += [t[:, :, :end] for t in (*cache.k, *cache.v)]
    nbytes = sum(t.numel() * t.element_size() for t in reads)
    floor = Case(size, f"floor ({nbytes / 1e6:.0f} MB)", lambda: [t.amax() for t in reads], None)
    floor.result["bytes"] = nbytes
    return [compare(eso), floor]


def ar_case(size: str, L: int, mods: dict[str, types.ModuleType]) -> Case:
    """One AR step at position L/2 against L/2 cached rows."""
    ours = build_random_model(size, "ar", vocab_size=VOCAB, model_length=L, seed=0).model
    ref = load_weights(mods["Eso-LMs"].DiT(ref_config(ours, causal=True), VOCAB), ours)
    p = L // 2
    x = tokens(p + 1, 3)
    with torch.inference_mode():
        cache = ours.new_kv_cache(BATCH, L)
        ours.forward_cached(x[:, :p], cache, start=0, causal=True, return_logits=False)
        ref.reset_kv_cache()
        for blk, k, v in zip(ref.blocks, cache.k, cache.v):
            blk.k_cache = k.transpose(1, 2).contiguous()  # (b, L, H, d_h), rotated K as theirs
            blk.v_cache = v.transpose(1, 2).contiguous()
    # The reference feeds x[:, -1:] at rotary position x.shape[1]: a length-p input ending in
    # the new token puts it at position p, as dlmbench's start=p.
    ref_in = torch.cat([x[:, : p - 1], x[:, p : p + 1]], 1)

    def reset() -> None:
        for blk in ref.blocks:
            blk.pointer = p - 1

    return compare(
        Case(
            size,
            "ar_step",
            lambda: ours.forward_cached(x[:, p : p + 1], cache, start=p, causal=True),
            lambda: ref(ref_in, None, kv_cache=True),
            reset,
        )  # fmt: skip
    )


def bd3_cases(size: str, L: int, mods: dict[str, types.ModuleType]) -> list[Case]:
    """BD3-LM denoising calls on the block after an L/2 prefix: efficient and reference modes."""
    ref, out = None, []
    x, P = tokens(L, 4), L // 2
    for blk in BLOCKS:  # one dlmbench network per L′: its layouts are chosen for L′ rows
        ours = build_random_model(
            size, "bd3lm", vocab_size=VOCAB, model_length=L, block_size=blk, seed=0
        ).model
        M = ours.config.mask_id
        if ref is None:  # one reference network: the block size is an attribute it reads
            ref = mods["bd3lms"].DIT(ref_config(ours, causal=False, block_size=blk), VOCAB)
            ref = load_weights(ref, ours)
        z = x[:, P : P + blk].clone()
        z[:, ::2] = M
        with torch.inference_mode():
            kv, qkv = ours.new_kv_cache(BATCH, L), ours.new_qkv_cache(BATCH, L, blk)
            mask = block_causal_mask(P, blk)
            ours.forward_cached(
                x[:, :P], kv, start=0, causal=False, attn_mask=mask, return_logits=False
            )
            ours.forward_cached_reference(x[:, :P], qkv, start=0, return_logits=False)
        bufs = []
        for buf in qkv.qkv:  # un-rotated (q, k, v) rows: the layout of both caches
            bufs.append(torch.zeros(BATCH, ref.max_seqlen, buf.shape[-1]))
            bufs[-1][:, :P] = buf[:, :P]
        sigma = torch.zeros(BATCH)

        def reset(blk=blk, bufs=bufs, ref=ref) -> None:
            ref.block_size = blk
            for rb, buf in zip(ref.blocks, bufs):
                rb.block_size, rb.cache_idx, rb.kv_cache = blk, P, buf

        def call_ref(z=z, sigma=sigma, ref=ref) -> torch.Tensor:
            return ref(z, sigma, sample_mode=True, store_kv=False)

        out.append(
            Case(size, f"bd3_eff_{blk}",
                 lambda z=z, kv=kv, ours=ours: ours.forward_cached(z, kv, start=P, causal=False),
                 call_ref,
                 reset)
        )  # fmt: skip
        out.append(
            Case(size, f"bd3_ref_{blk}",
                 lambda z=z, qkv=qkv, ours=ours: ours.forward_cached_reference(z, qkv, start=P),
                 call_ref,
                 reset)
        )  # fmt: skip
    return [compare(c) for c in out]


# ---------------------------------------------------------------------------------------------
# Timing: interleaved, 1 thread, medians of wall and thread CPU time
# ---------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall s, thread CPU s) of one call."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def run_group(cases: list[Case], floor: Case | None, warmup: int, repeats: int) -> None:
    """Time each case's two sides (and the floor) interleaved; fill ``case.result``."""
    rng = random.Random(0)
    for case in cases:
        sides = {"ours": case.ours, "ref": case.ref} if case.ref else {"ours": case.ours}
        if floor is not None and case is not floor:
            sides["floor"] = floor.ours
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
        meter = ContentionMeter("cpu")
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in sides.values():
                    case.reset()
                    fn()
            meter.start()
            for _ in range(repeats):
                order = list(sides)
                rng.shuffle(order)
                for k in order:
                    case.reset()
                    samples[k].append(timed(sides[k]))
            contention = meter.stop()
        for k, vals in samples.items():
            case.result[f"{k}_wall"] = statistics.median(v[0] for v in vals)
            case.result[f"{k}_cpu"] = statistics.median(v[1] for v in vals)
        case.result["others_cores"] = contention["others_cores"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ms(s: float) -> str:
    """Seconds as milliseconds, 3 significant figures."""
    return f"{s * 1e3:.3g}"


def table(cases: list[Case], header: list[str]) -> str:
    """The markdown ratio table."""
    lines = [*header, ""]
    lines.append(
        "| size | call | dlmbench ms (wall / CPU) | reference ms (wall / CPU) | ratio wall | "
        "ratio CPU | × floor | max abs Δ logits | others_cores |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        r = c.result
        ours = f"{ms(r['ours_wall'])} / {ms(r['ours_cpu'])}"
        if c.ref is None:
            gbps = r["bytes"] / r["ours_wall"] / 1e9
            lines.append(
                f"| {c.size} | {c.name}: {gbps:.1f} GB/s | {ours} | – | – | – | 1 | – | "
                f"{r['others_cores']:.2f} |"
            )
            continue
        ref = f"{ms(r['ref_wall'])} / {ms(r['ref_cpu'])}"
        floor = f"{r['ours_wall'] / r['floor_wall']:.2f}" if "floor_wall" in r else "–"
        lines.append(
            f"| {c.size} | {c.name} | {ours} | {ref} | {r['ours_wall'] / r['ref_wall']:.2f} | "
            f"{r['ours_cpu'] / r['ref_cpu']:.2f} | {floor} | {c.max_diff:.1e} | "
            f"{r['others_cores']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def decisions() -> str:
    """The skinny-row decisions the dlmbench networks measured in this run."""
    lines = ["", "Weight layouts and products chosen (harness.model.skinny), per linear shape:", ""]
    lines += ["| in → out | design rows | layout (s per pass: rows / cols) | skinny product for |",
              "|---|---|---|---|"]  # fmt: skip
    for (shape, rows), choice in sorted(skinny.LAYOUTS.items(), key=lambda kv: kv[0][0][3:5]):
        sec = dict(choice.seconds)
        rule = skinny.RULES.get((*shape, choice.layout))
        use = [n for n in range(1, skinny.MAX_ROWS + 1) if rule and rule.uses_skinny(n)]
        lines.append(
            f"| {shape[3]} → {shape[4]} | {rows} | {choice.layout} ({ms(sec['rows'])} / "
            f"{ms(sec['cols'])} ms) | {use or 'none'} rows |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", type=Path, help="folder holding bd3lms/ and Eso-LMs/")
    p.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "dlmbench" / "reference"
    )
    p.add_argument(
        "--source", action="append", default=[], metavar="NAME=URL",
        help="clone NAME from URL instead of GitHub (the pinned commit still applies)",
    )  # fmt: skip
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated model sizes")
    p.add_argument("--length", type=int, default=1024, help="cache length L (≤ 1024)")
    p.add_argument("--repeats", type=int, default=0, help="timed calls per side (0: by size)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_reference.md")
    p.add_argument("--no-install", action="store_true", help="never pip-install einops")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Set up both sides, check they agree, time them, write the table."""
    args = parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    bad = [s for s in sizes if s not in SIZES]
    if bad or not 32 <= args.length <= 1024:
        raise SystemExit(
            f"error: --sizes {args.sizes!r} / --length {args.length}: sizes must be among "
            f"{', '.join(SIZES)} and L in [32, 1024] (bd3lms's cache holds 1024 rows)."
        )
    torch.set_num_threads(1)
    urls = dict(s.split("=", 1) for s in args.source)
    try:
        einops_version = ensure_einops(args.cache_dir, not args.no_install)
        paths = {
            n: checkout(n, args.reference_dir, args.cache_dir, urls.get(n)) for n in REFERENCES
        }
        mods = {n: import_dit(p, f"_ref_{n.replace('-', '_')}_dit") for n, p in paths.items()}
        cases: list[Case] = []
        for size in sizes:
            repeats = args.repeats or (101 if size == "tiny" else 11)
            warm = args.warmup * (10 if size == "tiny" else 1)
            print(f"[{size}] building and checking ...", flush=True)
            eso, floor = eso_cases(size, args.length, mods)
            group = [eso, ar_case(size, args.length, mods)]
            run_group([floor, *group], floor, warm, repeats)
            cases += [floor, *group]
            del group, eso
            group = bd3_cases(size, args.length, mods)
            print(f"[{size}] timing BD3-LM ...", flush=True)
            run_group(group, None, warm, repeats)
            cases += group
            del group
            for c in cases[-7:]:
                print(f"  {c.name}: {c.result}", flush=True)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = [
        "# dlmbench vs the reference code, one call each",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
        f"scripts/bench_reference.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, batch {BATCH}, fp32, "
        f"V = {VOCAB}, L = {args.length}, cache half full; einops {einops_version}; "
        + ", ".join(f"{n} {commit_of(p)}" for n, p in paths.items())
        + ". Ratio = dlmbench / reference (medians of interleaved calls); × floor = the call "
        "over the Eso-LM step's weight-bandwidth floor measured in the same interleave.",
    ]
    text = table(cases, header) + decisions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
