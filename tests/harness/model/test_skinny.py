"""Skinny-row linears and the network's per-call work (harness.model.skinny, network.py).

Oracles:
* each product against ``F.linear`` and a float64 product;
* every cached path against its uncached oracle with each product forced on both sides and the
  weights in each layout (row- and column-major), and the variants against each other on the
  same cached calls;
* the measured rule and layout choice against hand-worked probe times (fake probes), and the
  dispatch against a spy on the skinny product;
* the reference BD3-LM path's work (AdaLN per call, the per-layer clone, rotary over q, k and v of
  every row, plain ``F.linear``) observed on the real calls.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import harness.model.network as net
from harness.model import skinny
from harness.model.network import LayerNorm, block_causal_mask
from tests.conftest import tiny_model
from tests.harness.model.test_network_cache import M, noisy, rand_tokens


@pytest.fixture(autouse=True)
def _isolated_rules():
    """Each test starts from the rules measured so far and leaves them as it found them."""
    saved, layouts, mode = dict(skinny.RULES), dict(skinny.LAYOUTS), skinny._mode
    yield
    skinny.reset()
    skinny.RULES.update(saved)
    skinny.LAYOUTS.update(layouts)
    skinny._mode = mode


def linear_module(k: int, n: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


# ---------------------------------------------------------------------------------------------
# The two products
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead", [(1,), (2,), (3,), (1, 5), (2, 4), (8,)])
def test_skinny_product_equals_linear_and_float64(bias, lead):
    m = linear_module(48, 80, bias)
    x = torch.randn(*lead, 48, generator=torch.Generator().manual_seed(1))
    got = skinny.skinny_product(x, m.weight, m.bias)
    want64 = x.double() @ m.weight.double().T + (m.bias.double() if bias else 0)
    assert got.shape == (*lead, 80) and got.is_contiguous()
    assert_close(got.double(), want64, rtol=1e-5, atol=1e-5)
    assert_close(got, F.linear(x, m.weight, m.bias))


def test_skinny_product_has_gradients_equal_to_linear():
    m = linear_module(16, 24, True)
    x = torch.randn(2, 16, requires_grad=True)
    skinny.skinny_product(x, m.weight, m.bias).square().sum().backward()
    got = (x.grad.clone(), m.weight.grad.clone(), m.bias.grad.clone())
    x.grad = m.weight.grad = m.bias.grad = None
    F.linear(x, m.weight, m.bias).square().sum().backward()
    for a, b in zip(got, (x.grad, m.weight.grad, m.bias.grad)):
        assert_close(a, b)


@pytest.fixture
def product_calls(monkeypatch):
    """Count calls of the skinny product (linear() looks it up by module attribute)."""
    calls = []
    real = skinny.skinny_product

    def spy(x, w, b):
        calls.append(x.numel() // w.shape[1])
        return real(x, w, b)

    monkeypatch.setattr(skinny, "skinny_product", spy)
    return calls


def test_dispatch_follows_the_rule_and_the_forced_modes(product_calls):
    m = linear_module(16, 24, True)
    skinny.RULES[skinny.rule_key(m.weight, m.bias)] = skinny.SkinnyRule(one_row=False, upto=3)
    product_calls.clear()
    with skinny.forced("auto"):
        for n in (1, 2, 3, 4, 9):
            x = torch.randn(n, 16)
            assert_close(skinny.linear(x, m), F.linear(x, m.weight, m.bias))
    assert product_calls == [2, 3]  # n = 1 lost, 2..3 won, 4 lost, 9 > MAX_ROWS
    product_calls.clear()
    with skinny.forced("always"):
        for n in (1, 4, 8, 9):
            skinny.linear(torch.randn(n, 16), m)
    assert product_calls == [1, 4, 8]  # never above MAX_ROWS
    product_calls.clear()
    with skinny.forced("never"):
        skinny.linear(torch.randn(2, 16), m)
    assert product_calls == []


# ---------------------------------------------------------------------------------------------
# The measured rule
# ---------------------------------------------------------------------------------------------


def fake_probe(monkeypatch, table):
    """probe_rows returns table[n] = (F.linear s, skinny s); records the rows asked."""
    asked = []

    def probe(weights, n):
        asked.append(n)
        return table[n]

    monkeypatch.setattr(skinny, "probe_rows", probe)
    return asked


def test_rule_from_hand_worked_probe_times(monkeypatch):
    # n = 1: 0.97 is not 5 % faster than 1.0; 2, 3 win; 4 loses (1.95 > 0.95 · 2): stop there.
    table = {1: (1.0, 0.97), 2: (2.0, 1.0), 3: (2.0, 1.5), 4: (2.0, 1.95), 5: (9.0, 1.0)}
    asked = fake_probe(monkeypatch, table)
    rule = skinny.measure_rule([linear_module(8, 8, False)])
    assert (rule.one_row, rule.upto) == (False, 3)
    assert asked == [1, 2, 3, 4]
    assert [t[0] for t in rule.timings] == [1, 2, 3, 4]
    assert [rule.uses_skinny(n) for n in range(1, 7)] == [False, True, True, False, False, False]


def test_rule_that_always_wins_stops_at_max_rows(monkeypatch):
    asked = fake_probe(monkeypatch, {n: (1.0, 0.5) for n in range(1, skinny.MAX_ROWS + 1)})
    rule = skinny.measure_rule([linear_module(8, 8, True)])
    assert (rule.one_row, rule.upto) == (True, skinny.MAX_ROWS)
    assert asked == list(range(1, skinny.MAX_ROWS + 1))


def test_real_probes_time_every_variant():
    t_lin, t_sk = skinny.probe_rows([(torch.randn(24, 16), torch.randn(24))], 2)
    assert 0 < t_lin < 1 and 0 < t_sk < 1
    choice = skinny.choose_layout([linear_module(16, 24, True)], 2)
    assert choice.layout in ("rows", "cols") and set(dict(choice.seconds)) == {"rows", "cols"}


def test_rules_are_measured_at_freeze_once_per_shape(monkeypatch):
    skinny.reset()
    asked = fake_probe(monkeypatch, {n: (1.0, 2.0) for n in range(1, 9)})  # skinny always loses
    real_probe = skinny.probe
    monkeypatch.setattr(skinny, "probe", lambda vs, n: asked.append(("layouts", n)) or [1.0] * 4)
    with skinny.forced("auto"):
        model = tiny_model("esolm")
        # Five shapes: QKV 32→96, out 32→32, MLP 32→128 (+b) and 128→32 (+b), head 32→33 (+b):
        # per shape, the layouts at the design rows (2 for blocks, 1 for the head), then the
        # rule (1 row, 2 rows: lost, stop).
        assert len(skinny.RULES) == 5 and len(skinny.LAYOUTS) == 5
        assert asked == [("layouts", 2), 1, 2] * 4 + [("layouts", 1), 1, 2]
        tiny_model("esolm", seed=1)  # same shapes: nothing measured again
        cache = model.new_kv_cache(1, 8)
        model.forward_cached(rand_tokens(1, 3, 0), cache, start=0, causal=True)
        model(rand_tokens(1, 3, 0), logits=1)
    assert len(asked) == 15
    assert len(real_probe([(F.linear, [(torch.ones(4, 3), None)])], 2)) == 1


def layout_probe(monkeypatch, cols_wins_at):
    """Fake probes: ``cols`` is twice as fast at the row counts in ``cols_wins_at``."""

    def seconds(fn, weights, n):
        cols = skinny.layout_of(weights[0][0]) == "cols"
        t = 0.5 if cols and n in cols_wins_at else 1.0
        return t if fn is F.linear else 2 * t  # the skinny product always loses

    monkeypatch.setattr(skinny, "probe", lambda vs, n: [seconds(f, w, n) for f, w in vs])


@pytest.mark.parametrize(
    "family,blocks,head",
    [("ar", "cols", "cols"), ("esolm", "rows", "cols"), ("mdlm", "rows", "rows")],
)
def test_freeze_chooses_layouts_at_the_familys_design_rows(monkeypatch, family, blocks, head):
    skinny.reset()
    layout_probe(monkeypatch, cols_wins_at={1})  # cols wins for 1 row, not for 2
    with skinny.forced("auto"):
        model = tiny_model(family)
    got = {skinny.layout_of(m.weight) for m in model._call_linears()[:-1]}
    assert got == {blocks} and skinny.layout_of(model.output_layer.linear.weight) == head
    model.train()
    assert {skinny.layout_of(m.weight) for m in model._call_linears()} == {"rows"}


def test_cols_must_win_by_the_margin(monkeypatch):
    def probe(variants, n):
        cols = [skinny.layout_of(w[0][0]) == "cols" for _, w in variants]
        return [
            9.0 if fn is not F.linear else 0.97 if c else 1.0 for (fn, _), c in zip(variants, cols)
        ]

    monkeypatch.setattr(skinny, "probe", probe)
    choice = skinny.choose_layout([linear_module(8, 12, True)], 1)
    assert choice.layout == "rows" and dict(choice.seconds) == {"rows": 1.0, "cols": 0.97}


def test_set_layout_keeps_values_and_parameter_objects():
    m = linear_module(16, 24, True)
    p, before = m.weight, m.weight.detach().clone()
    skinny.set_layout([m], "cols")
    assert m.weight is p and m.weight.stride() == (1, 24) and torch.equal(m.weight, before)
    x = torch.randn(3, 16)
    assert_close(m(x), x @ before.T + m.bias)
    skinny.set_layout([m], "rows")
    assert m.weight.is_contiguous() and torch.equal(m.weight, before)
    with pytest.raises(skinny.SkinnyModeError, match="'diagonal'; allowed: rows, cols"):
        skinny.set_layout([m], "diagonal")


def test_peers_are_the_linears_of_one_shape_and_the_state_dict_is_unchanged():
    model = tiny_model("mdlm")
    qkv = model.blocks[0].attn_qkv.skinny_peers
    assert qkv == tuple(b.attn_qkv for b in model.blocks)
    assert model.output_layer.linear.skinny_peers == (model.output_layer.linear,)
    assert not any("skinny" in k or "_mlp" in k for k in model.state_dict())
    assert len(list(model.parameters())) == 1 + 4 + 2 * 10 + 5  # as test_network_cache counts


def test_bad_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(skinny.ENV, "fast")
    skinny._mode = None
    with pytest.raises(skinny.SkinnyModeError, match="DLMBENCH_SKINNY is 'fast'; allowed: auto"):
        skinny.current_mode()
    with pytest.raises(skinny.SkinnyModeError, match="'sometimes'"):
        with skinny.forced("sometimes"):
            pass
    monkeypatch.setenv(skinny.ENV, "never")
    skinny._mode = None
    assert skinny.current_mode() == "never"


# ---------------------------------------------------------------------------------------------
# Every cached path equals its oracle with each product forced (and the products agree)
# ---------------------------------------------------------------------------------------------

PAIRS = [("always", "never"), ("never", "always"), ("always", "always")]
LAYOUTS = ["rows", "cols"]


def laid_out(model, layout: str):
    skinny.set_layout(model._call_linears(), layout)
    return model


def esolm_steps(model, mode: str, b: int = 2, L: int = 12, ks=(2, 1, 3, 1, 4, 1)):
    """Logits of every cached Eso-LM step (one-step lag), under ``mode``."""
    g = torch.Generator().manual_seed(3)
    pi = torch.stack([torch.randperm(L, generator=g) for _ in range(b)])
    truth = rand_tokens(b, L, 21)
    cos, sin = model.rotary_emb.tables(pi)
    cache = model.new_kv_cache(b, L)
    out, u, k_prev, n_c = [], 0, 0, 0
    with skinny.forced(mode):
        for k in ks:
            fed = torch.cat([truth[:, u - k_prev : u], torch.full((b, k), M)], 1)
            sl = slice(u - k_prev, u + k)
            out.append(
                model.forward_cached(
                    fed, cache, start=n_c, causal=True, rope=(cos[:, sl], sin[:, sl]), logits=k
                )
            )
            n_c, u, k_prev = n_c + k_prev, u + k, k
    return out, truth, pi


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cached_mode,oracle_mode", PAIRS)
def test_esolm_steps_equal_oracle_under_each_product(cached_mode, oracle_mode, layout):
    model = laid_out(tiny_model("esolm"), layout)
    got, truth, pi = esolm_steps(model, cached_mode)
    u = 0
    with skinny.forced(oracle_mode):
        for k, logits in zip((2, 1, 3, 1, 4, 1), got):
            seq = torch.cat([truth[:, :u], torch.full((2, k), M)], 1)
            assert_close(logits, model(seq, positions=pi[:, : u + k], is_causal=True)[:, -k:])
            u += k


def test_esolm_steps_agree_between_products_and_layouts():
    model = laid_out(tiny_model("esolm"), "rows")
    ref = esolm_steps(model, "never")[0]
    runs = [esolm_steps(model, "always")[0]]
    laid_out(model, "cols")
    runs += [esolm_steps(model, "always")[0], esolm_steps(model, "never")[0]]
    for run in runs:
        for a, b in zip(run, ref):
            assert_close(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cached_mode,oracle_mode", PAIRS)
def test_ar_steps_equal_oracle_under_each_product(cached_mode, oracle_mode, layout):
    model = laid_out(tiny_model("ar"), layout)
    b, L = 2, 10
    x = rand_tokens(b, L, 8)
    cache = model.new_kv_cache(b, L)
    with skinny.forced(cached_mode):
        got = [model.forward_cached(x[:, :2], cache, start=0, causal=True)]
        got += [
            model.forward_cached(x[:, i : i + 1], cache, start=i, causal=True) for i in range(2, L)
        ]
    with skinny.forced(oracle_mode):
        assert_close(torch.cat(got, 1), model(x, is_causal=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cached_mode,oracle_mode", PAIRS)
@pytest.mark.parametrize("style", ["efficient", "reference"])
def test_bd3lm_blocks_equal_oracle_under_each_product(cached_mode, oracle_mode, style, layout):
    blk, b, L = 4, 2, 12
    model = laid_out(tiny_model("bd3lm", block_size=blk), layout)
    x = rand_tokens(b, L, 12)
    cache = model.new_kv_cache(b, L) if style == "efficient" else model.new_qkv_cache(b, L, blk)
    for P in range(0, L, blk):
        z = noisy(x[:, P : P + blk], seed=P)
        with skinny.forced(cached_mode):
            if style == "efficient":
                got = model.forward_cached(z, cache, start=P, causal=False)
                model.forward_cached(x[:, P : P + blk], cache, start=P, causal=False,
                                     return_logits=False)  # fmt: skip
            else:
                got = model.forward_cached_reference(z, cache, start=P)
                model.forward_cached_reference(x[:, P : P + blk], cache, start=P,
                                               return_logits=False)  # fmt: skip
        with skinny.forced(oracle_mode):
            seq = torch.cat([x[:, :P], z], 1)
            want = model(seq, attn_mask=block_causal_mask(P + blk, blk))[:, P:]
        assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# Per-call overheads removed
# ---------------------------------------------------------------------------------------------


def test_layer_norm_is_fp32_for_bf16_input_and_equals_float64():
    ln = LayerNorm(24)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.1 * torch.randn(24))
    x = torch.randn(3, 5, 24)
    h = x.double()
    want = (h - h.mean(-1, keepdim=True)) / torch.sqrt(
        h.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    want = want * ln.weight.double()
    assert_close(ln(x).double(), want, rtol=1e-5, atol=1e-5)
    out = ln(x.bfloat16())
    assert out.dtype == torch.float32
    assert_close(out, ln(x.bfloat16().float()))
    ln.bfloat16()
    assert ln(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ln(x).dtype == torch.float32


def test_no_dropout_call_in_eval_and_dropout_in_training(monkeypatch):
    calls = []
    real = F.dropout

    def spy(x, p=0.5, training=True, inplace=False):
        calls.append(training)
        return real(x, p, training, inplace)

    monkeypatch.setattr(torch.nn.functional, "dropout", spy)
    model = tiny_model("esolm", dropout=0.1)
    cache = model.new_kv_cache(1, 6)
    model.forward_cached(rand_tokens(1, 2, 0), cache, start=0, causal=True)
    model(rand_tokens(1, 6, 1))
    assert calls == []
    model.train()
    model(rand_tokens(1, 6, 1))
    assert calls == [True] * 4  # attention and MLP residuals of both blocks


def test_cached_calls_do_not_gather_the_conditioning_parameters(monkeypatch):
    model = tiny_model("esolm")
    gathered = []
    real = model._conditioning_params
    monkeypatch.setattr(model, "_conditioning_params", lambda: gathered.append(1) or real())
    cache = model.new_kv_cache(1, 8)
    for i in range(4):
        model.forward_cached(rand_tokens(1, 2, i), cache, start=2 * i, causal=True, logits=1)
    assert gathered == []
    with torch.no_grad():  # an in-place change is still seen: the vectors are recomputed once
        model.blocks[1].adaLN_modulation.weight.mul_(0.5)
    model.forward_cached(rand_tokens(1, 2, 9), cache, start=0, causal=True)
    model.forward_cached(rand_tokens(1, 2, 9), cache, start=0, causal=True)
    assert gathered == [1]


# ---------------------------------------------------------------------------------------------
# The reference BD3-LM path does bd3lms's work per call
# ---------------------------------------------------------------------------------------------


def test_reference_call_recomputes_adaln_every_call_and_efficient_does_not():
    model = tiny_model("bd3lm", block_size=4)
    seen = []
    model.sigma_map.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = rand_tokens(3, 12, 4)
    qkv, kv = model.new_qkv_cache(3, 12, 4), model.new_kv_cache(3, 12)
    model.forward_cached(x[:, :4], kv, start=0, causal=False)
    assert seen == []
    model.forward_cached_reference(x[:, :4], qkv, start=0)
    model.forward_cached_reference(x[:, 4:8], qkv, start=4, return_logits=False)
    assert seen == [(3, 8), (3, 8)]  # σ-map per call, one row per batch row, as bd3lms


def test_reference_call_clones_and_rotates_q_k_v_of_every_row(monkeypatch, product_calls):
    model = tiny_model("bd3lm", block_size=4)
    b, L, P = 2, 16, 8
    x = rand_tokens(b, L, 5)
    cache = model.new_qkv_cache(b, L, 4)
    model.forward_cached_reference(x[:, :P], cache, start=0, return_logits=False)
    rotated = []
    real = net.rotate

    def spy(t, cos, sin):
        rotated.append((tuple(t.shape), t.untyped_storage().data_ptr()))
        out = real(t, cos, sin)
        if t.dim() == 5:  # the v slot is rotated by the identity
            assert torch.equal(out[:, :, 2], t[:, :, 2])
        return out

    monkeypatch.setattr(net, "rotate", spy)
    product_calls.clear()
    with skinny.forced("always"):
        model.forward_cached_reference(x[:, P : P + 4], cache, start=P)
    buffers = {t.untyped_storage().data_ptr() for t in cache.qkv}
    assert [s for s, _ in rotated] == [(b, P + 4, 3, 2, 16)] * 2  # every row, q k v, per layer
    assert not buffers & {p for _, p in rotated}  # a clone of the cache, not the cache itself
    assert product_calls == []  # plain F.linear even where the skinny product is forced
    assert cache.rope[0] == P + 4  # tables kept for the next call of this block


def test_reference_tables_are_rebuilt_only_when_the_row_count_changes():
    model = tiny_model("bd3lm", block_size=4)
    x = rand_tokens(1, 12, 6)
    cache = model.new_qkv_cache(1, 12, 4)
    model.forward_cached_reference(x[:, :4], cache, start=0)
    first = cache.rope
    model.forward_cached_reference(noisy(x[:, :4], 1), cache, start=0)
    assert cache.rope is first
    model.forward_cached_reference(x[:, 4:8], cache, start=4)
    assert cache.rope is not first and cache.rope[1].shape == (1, 8, 3, 1, 16)


def test_state_dict_is_contiguous_whatever_the_layout(tmp_path):
    from safetensors.torch import load_file, save_file

    model = laid_out(tiny_model("ar"), "cols")
    assert skinny.layout_of(model.blocks[0].attn_qkv.weight) == "cols"
    state = model.state_dict()
    assert all(v.is_contiguous() for v in state.values())
    save_file(state, str(tmp_path / "m.safetensors"))
    fresh = tiny_model("ar", seed=5)
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = rand_tokens(2, 7, 3)
    with skinny.forced("never"):
        assert_close(fresh(x), model(x))
    assert isinstance(model.state_dict(keep_vars=True)["blocks.0.attn_qkv.weight"], nn.Parameter)


def test_dispatch_follows_the_layout_after_a_relayout(product_calls):
    m = linear_module(16, 24, False)
    rows_key = skinny.rule_key(m.weight, m.bias)
    skinny.RULES[rows_key] = skinny.SkinnyRule(one_row=False, upto=4)
    skinny.RULES[(*rows_key[:-1], "cols")] = skinny.SkinnyRule(one_row=False, upto=1)
    x = torch.randn(2, 16)
    with skinny.forced("auto"):
        skinny.linear(x, m)
        skinny.set_layout([m], "cols")
        assert_close(skinny.linear(x, m), F.linear(x, m.weight))
        skinny.set_layout([m], "rows")
        skinny.linear(x, m)
    assert product_calls == [2, 2]  # rows: skinny; cols: F.linear; rows again: skinny
