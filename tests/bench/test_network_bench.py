"""Micro-benchmarks of single network calls (pytest-benchmark; opt-in, never asserted on time).

Run (sequentially; pytest-benchmark disables itself under xdist)::

    OMP_NUM_THREADS=2 /work/main/.venv/bin/python -m pytest -m benchmark --benchmark-enable \
        tests/bench/test_network_bench.py

Sizes (``DLMBENCH_BENCH_SIZES``, default ``cpu-s,small``), batch 1, fp32, random seeded weights:

* ``cpu-s``: d 128, N 4, H 4, V 8193, L 256.
* ``small``: d 768, N 12, H 12 (DiT-small), V 50258, L 1024.

Calls (one network call each, NFE 1, at a late position so the cache is nearly full):

* Eso-LM (B) cached step, k_prev = 1, k = 1: feeds 2 tokens against L − 2 cached rows.
* BD3-LM block step, block B = 4 and 16, last block: efficient (K/V cache, the block attends
  as queries) and reference (bd3lms QKV cache, every row re-attends as a query).
* AR cached step: 1 token against L − 1 cached rows.
* MDLM full forward over L tokens.
* The Eso-LM step again with each linear product forced (``skinny.forced``: ``never`` =
  ``F.linear`` everywhere, ``always`` = the skinny product for every linear of ≤ 8 rows).
* One linear of each DiT shape on 1, 2 and 4 rows, by each product, cycling through N weights
  of that shape (as a call streams them) in the layout the Eso-LM network chose for them (the
  skinny product on a column-major head is the slow case its rule avoids), and the
  weight-bandwidth floor: one ``amax`` over every tensor an Eso-LM step reads.

After timing, each result is compared with its uncached oracle (the same oracles as
``tests/harness/model/test_network_cache.py``), so a benchmark of a wrong call cannot pass.
Frontier and claims numbers come from the runner, never from here.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from harness.model import skinny
from harness.model.checkpoints import build_random_model
from harness.model.network import DiT, block_causal_mask
from tests.harness.model.test_network_cache import naive_forward

pytestmark = pytest.mark.benchmark

SIZES = {
    # size: (V, L, rounds, warm-up rounds) for the cached steps; the full forward uses fewer.
    "cpu-s": (8193, 256, 40, 5),
    "small": (50258, 1024, 6, 2),
}
SELECTED = [s for s in os.environ.get("DLMBENCH_BENCH_SIZES", "cpu-s,small").split(",") if s]
B = 1  # batch


@functools.lru_cache(maxsize=1)  # one model alive at a time: DiT-small is 0.68 GB in fp32
def model_for(size: str, family: str) -> DiT:
    V, L, _, _ = SIZES[size]
    return build_random_model(size, family, vocab_size=V, model_length=L, seed=0).model


def tokens(size: str, n: int, seed: int) -> torch.Tensor:
    V = SIZES[size][0]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V - 1, (B, n), generator=g)  # never the mask id V − 1


def info(benchmark, size: str, model: DiT, **kw) -> None:
    c = model.config
    benchmark.extra_info.update(
        size=size,
        d=c.hidden_size,
        n_blocks=c.n_blocks,
        n_heads=c.n_heads,
        vocab=c.vocab_size,
        seq_len=SIZES[size][1],
        batch=B,
        dtype="float32",
        nfe=1,
        threads=torch.get_num_threads(),
        **kw,
    )


def run(benchmark, size: str, fn, args: tuple, full: bool = False):
    """Time ``fn(*args)`` under inference mode; returns the last result."""
    _, _, rounds, warm = SIZES[size]
    if full:
        rounds, warm = max(3, rounds // 2), 1

    def timed(*a):
        with torch.inference_mode():
            return fn(*a)

    return benchmark.pedantic(
        timed, setup=lambda: (args, {}), rounds=rounds, warmup_rounds=warm, iterations=1
    )


@pytest.fixture(params=SELECTED)
def size(request):
    if request.param not in SIZES:
        pytest.fail(f"DLMBENCH_BENCH_SIZES has {request.param!r}; allowed: {sorted(SIZES)}")
    return request.param


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["auto", "never", "always"])
def test_esolm_cached_step_kprev1_k1(benchmark, size, product):
    """One Eso-LM (B) sequential step at u = L − 1: the last committed token and one mask."""
    model = model_for(size, "esolm")
    L, M = SIZES[size][1], model.config.mask_id
    g = torch.Generator().manual_seed(1)
    pi = torch.randperm(L, generator=g)[None]  # (1, L) decoding order π
    truth = tokens(size, L, 2)  # committed tokens in π order
    with torch.inference_mode():
        cos, sin = model.rotary_emb.tables(pi)  # (1, L, 1, d_h)
        cache = model.new_kv_cache(B, L)
        n_c = L - 2
        prefix_rope = (cos[:, :n_c], sin[:, :n_c])
        model.forward_cached(
            truth[:, :n_c], cache, start=0, causal=True, rope=prefix_rope, return_logits=False
        )
        fed = torch.cat([truth[:, n_c : n_c + 1], torch.full((B, 1), M)], 1)  # (1, 2)
        rope = (cos[:, n_c:], sin[:, n_c:])

    def step(x):
        with skinny.forced(product):
            return model.forward_cached(x, cache, start=n_c, causal=True, rope=rope, logits=1)

    info(benchmark, size, model, call="esolm_cached_step", fed=2, cache_rows=L, head_rows=1)
    benchmark.extra_info["product"] = product
    got = run(benchmark, size, step, (fed,))
    with torch.inference_mode():
        seq = torch.cat([truth[:, : L - 1], torch.full((B, 1), M)], 1)
        want = model(seq, positions=pi, is_causal=True, logits=1)  # (1, 1, V)
    assert_close(got, want, rtol=1e-4, atol=1e-4)


def _bd3lm_caches(model: DiT, prefix: torch.Tensor, L: int, blk: int):
    """K/V and QKV caches holding the block-causal encoding of ``prefix`` (one store pass each)."""
    P = prefix.shape[1]
    kv_cache, qkv_cache = model.new_kv_cache(B, L), model.new_qkv_cache(B, L, blk)
    mask = block_causal_mask(P, blk)
    model.forward_cached(prefix, kv_cache, start=0, causal=False, attn_mask=mask,
                         return_logits=False)  # fmt: skip
    model.forward_cached_reference(prefix, qkv_cache, start=0, return_logits=False)
    return kv_cache, qkv_cache


@pytest.mark.parametrize("style", ["efficient", "reference"])
@pytest.mark.parametrize("blk", [4, 16])
def test_bd3lm_block_step(benchmark, size, blk, style):
    """One BD3-LM denoising call on the last block, against a cache of the L − B prefix."""
    model = model_for(size, "bd3lm")
    L, M = SIZES[size][1], model.config.mask_id
    P = L - blk
    x = tokens(size, L, 3)
    z = x[:, P:].clone()
    z[:, ::2] = M  # a partly masked block
    with torch.inference_mode():
        kv_cache, qkv_cache = _bd3lm_caches(model, x[:, :P], L, blk)

    if style == "efficient":

        def step(block):
            return model.forward_cached(block, kv_cache, start=P, causal=False)
    else:

        def step(block):
            return model.forward_cached_reference(block, qkv_cache, start=P)

    queries = blk if style == "efficient" else L
    info(benchmark, size, model, call=f"bd3lm_{style}_block_step", block_size=blk, fed=blk)
    benchmark.extra_info.update(cache_rows=L, attn_queries=queries)
    got = run(benchmark, size, step, (z,))
    with torch.inference_mode():
        seq = torch.cat([x[:, :P], z], 1)
        want = model(seq, attn_mask=block_causal_mask(L, blk), logits=blk)  # (1, B, V)
    assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_ar_cached_step(benchmark, size):
    """One AR step at position L − 1 against L − 1 cached rows."""
    model = model_for(size, "ar")
    L = SIZES[size][1]
    x = tokens(size, L, 4)
    with torch.inference_mode():
        cache = model.new_kv_cache(B, L)
        model.forward_cached(x[:, : L - 1], cache, start=0, causal=True, return_logits=False)

    def step(tok):
        return model.forward_cached(tok, cache, start=L - 1, causal=True)

    info(benchmark, size, model, call="ar_cached_step", fed=1, cache_rows=L, head_rows=1)
    got = run(benchmark, size, step, (x[:, L - 1 :],))
    with torch.inference_mode():
        want = model(x, is_causal=True, logits=1)  # (1, 1, V)
    assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_mdlm_full_forward(benchmark, size):
    """One uncached bidirectional forward over L tokens (MDLM denoising call)."""
    model = model_for(size, "mdlm")
    L, M = SIZES[size][1], model.config.mask_id
    x = tokens(size, L, 5)
    x[:, ::2] = M
    info(benchmark, size, model, call="mdlm_full_forward", fed=L, head_rows=L)
    got = run(benchmark, size, model, (x,), full=True)
    assert got.shape == (B, L, model.config.vocab_size)
    with torch.inference_mode():
        if size == "cpu-s":  # the independent float64 implementation (explicit softmax)
            pos = torch.arange(L)[None]
            want = naive_forward(model, x, pos, torch.ones(L, L, dtype=torch.bool)).float()
        else:  # too large for float64 on CPU: the same rows through two head slices
            want = torch.cat([model(x, logits=slice(0, L // 2)), model(x, logits=L - L // 2)], 1)
    assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("product", ["linear", "skinny"])
@pytest.mark.parametrize("shape", ["qkv", "out", "up", "down", "head"])
def test_linear_products(benchmark, size, shape, product, rows):
    """One pass of a linear over the N weights of one shape (the head: its one weight)."""
    model = model_for(size, "esolm")
    mods = {
        "qkv": [b.attn_qkv for b in model.blocks],
        "out": [b.attn_out for b in model.blocks],
        "up": [b.mlp[0] for b in model.blocks],
        "down": [b.mlp[2] for b in model.blocks],
        "head": [model.output_layer.linear],
    }[shape]
    x = torch.randn(rows, mods[0].in_features, generator=torch.Generator().manual_seed(0))
    fn = F.linear if product == "linear" else skinny.skinny_product

    def one_pass(xx):
        return [fn(xx, m.weight, m.bias) for m in mods]

    info(benchmark, size, model, call=f"linear_{shape}", rows=rows, product=product)
    benchmark.extra_info.update(weights=len(mods), mb=sum(m.weight.nbytes for m in mods) / 1e6)
    got = run(benchmark, size, one_pass, (x,))
    for y, m in zip(got, mods):
        assert_close(y, F.linear(x, m.weight, m.bias), rtol=1e-4, atol=1e-4)


def test_weight_bandwidth_floor(benchmark, size):
    """Stream once every tensor an Eso-LM step at u = L − 1 reads (one amax each)."""
    model = model_for(size, "esolm")
    L = SIZES[size][1]
    cache = model.new_kv_cache(B, L)
    reads = [p for n, p in model.named_parameters() if "adaLN" not in n and "sigma" not in n]
    reads = [p for p in reads if p is not model.vocab_embed.embedding]
    reads += [t for t in (*cache.k, *cache.v)]
    nbytes = sum(t.numel() * t.element_size() for t in reads)
    info(benchmark, size, model, call="weight_floor", mb=nbytes / 1e6)
    got = run(benchmark, size, lambda: [t.amax() for t in reads], ())
    assert len(got) == len(reads)
