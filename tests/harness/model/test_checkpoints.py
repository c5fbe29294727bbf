"""Checkpoint I/O: every public layout, written at test time in its exact format, loads into our
network and gives the logits of the network it was written from; every bad input is a one-line
error naming the file, the key, the expected and the found value (checkpoints.md §7).

Oracle: the in-memory source network (``tiny_model``, seeded non-zero weights, fp32). Each
round-trip test also checks that a network with other weights gives different logits, so an
equality can only hold if the right weights were loaded. Every test runs under a socket guard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from harness.model.checkpoints import (
    CheckpointError,
    add_parser,
    build_random_model,
    config_from_fields,
    convert_lightning_checkpoint,
    ema_state_dict,
    load_checkpoint,
    resolve_model,
    save_checkpoint,
)
from harness.model.network import DiT, DiTConfig
from tests.conftest import TINY, tiny_model

V, M = TINY["vocab_size"], TINY["vocab_size"] - 1


# ---------------------------------------------------------------------------------------------
# No network access, ever
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def socket_guard(monkeypatch):
    """Any attempt to open a connection (a hub download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted during a checkpoint test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_socket_guard_is_active():
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("huggingface.co", 443))
    with pytest.raises(AssertionError, match="network access"):
        socket.socket().connect(("127.0.0.1", 9))


def test_hub_id_is_never_downloaded():
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("kuleshov-group/mdlm-owt")
    msg = one_line(err)
    assert "kuleshov-group/mdlm-owt: no such file or directory" in msg
    assert "Nothing is downloaded" in msg and "looks like a hub id" in msg


# ---------------------------------------------------------------------------------------------
# Fixture writers: the exact public layouts
# ---------------------------------------------------------------------------------------------


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, f"error messages must be one line: {msg!r}"
    return msg


def tokens(b: int = 2, n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V - 1, (b, n), generator=g)
    x[:, ::3] = M  # some masks, as a sampler would feed
    return x


def ref_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The reference's rotary buffer: 1 / base^(2j/d_h) (computed as the reference does)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


def public_state(model: DiT, prefix: str = "backbone.", inv_freq: bool = True) -> dict:
    sd = {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
    if inv_freq:
        sd[prefix + "rotary_emb.inv_freq"] = ref_inv_freq(model.config.head_dim)
    return sd


def write_hf(d: Path, config: dict, state: dict, weights: str = "model.safetensors") -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    if weights.endswith(".safetensors"):
        save_file(state, str(d / weights))
    else:
        torch.save(state, d / weights)
    return d


def mdlm_config(**over) -> dict:
    """kuleshov-group/mdlm-owt's config.json, tiny sizes."""
    cfg = {
        "_name_or_path": "kuleshov-group/mdlm-owt",
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig"},
        "model_type": "mdlm",
        "vocab_size": V,
        "model_length": 16,
        "hidden_dim": 32,
        "cond_dim": 8,
        "n_blocks": 2,
        "n_heads": 2,
        "dropout": 0.1,
        "time_conditioning": False,
        "return_dict": False,
        "torch_dtype": "float32",
        "transformers_version": "4.38.2",
    }
    return {**cfg, **over}


def bd3lm_config(**over) -> dict:
    cfg = mdlm_config(model_type="bd3lm", architectures=["BD3LM"])
    cfg.update(
        block_size=4,
        attn_backend="flex",
        cross_attn=True,
        adaln=True,
        causal=False,
        var_min=True,
        sampling_eps_min=1e-3,
        sampling_eps_max=0.999,
    )
    return {**cfg, **over}


def esolm_config(**over) -> dict:
    """sahoo-diffusion/Eso-LM-B-*: hidden_size, plus the push script's stray hidden_dim=768."""
    cfg = {
        "architectures": ["EsoLM"],
        "model_type": "EsoLM",
        "vocab_size": V,
        "mask_index": M,
        "model_length": 16,
        "hidden_size": 32,
        "hidden_dim": 768,
        "cond_dim": 8,
        "n_blocks": 2,
        "n_heads": 2,
        "dropout": 0.1,
        "return_dict": False,
    }
    return {**cfg, **over}


def ar_config(**over) -> dict:
    cfg = mdlm_config()
    del cfg["model_type"], cfg["architectures"], cfg["time_conditioning"]
    return {**cfg, **over}


def make_layout(name: str, root: Path) -> tuple[Path, DiT]:
    """Write the named fixture under ``root``; return its path and the source network."""
    if name == "mdlm_tiny":
        src = tiny_model("mdlm", seed=1)
        return write_hf(root / name, mdlm_config(), public_state(src)), src
    if name == "mdlm_bin":
        src = tiny_model("mdlm", seed=2)
        return write_hf(root / name, mdlm_config(), public_state(src), "pytorch_model.bin"), src
    if name == "mdlm_orig_mod":
        src = tiny_model("mdlm", seed=3)
        return write_hf(root / name, mdlm_config(), public_state(src, "backbone._orig_mod.")), src
    if name == "bd3lm_tiny":
        src = tiny_model("bd3lm", seed=4, block_size=4)
        state = public_state(src)
        state["sampling_eps_min"] = torch.tensor(1e-3)
        state["sampling_eps_max"] = torch.tensor(0.999)
        return write_hf(root / name, bd3lm_config(), state), src
    if name == "esolm_tiny":
        src = tiny_model("esolm", seed=5)
        return write_hf(root / name, esolm_config(), public_state(src)), src
    if name == "ar_tiny":
        src = tiny_model("ar", seed=6)
        return write_hf(root / name, ar_config(), public_state(src)), src
    if name == "duo_tiny":
        src = tiny_model("mdlm", seed=7, time_conditioning=True)
        state = public_state(src)
        teacher = tiny_model("mdlm", seed=8)
        state.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
        return write_hf(root / name, mdlm_config(model_type="duo"), state), src
    raise KeyError(name)


LAYOUTS = {
    # name: (family, mask id, block size, time-conditioned)
    "mdlm_tiny": ("mdlm", M, None, False),
    "mdlm_bin": ("mdlm", M, None, False),
    "mdlm_orig_mod": ("mdlm", M, None, False),
    "bd3lm_tiny": ("bd3lm", M, 4, False),
    "esolm_tiny": ("esolm", M, None, False),
    "ar_tiny": ("ar", M, None, False),
    "duo_tiny": ("mdlm", M, None, True),
}


def assert_same_logits(loaded: DiT, src: DiT, other: DiT | None = None) -> None:
    x = tokens()
    sigma = torch.tensor([0.3, 0.8])  # used only by time-conditioned networks
    with torch.no_grad():
        got, want = loaded(x, sigma=sigma), src(x, sigma=sigma)
        assert_close(got, want, rtol=0, atol=0)
        assert got.std() > 0.1
        if other is not None:
            assert (other(x, sigma=sigma) - want).abs().max() > 1e-2, "the test would be vacuous"


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_public_layout_loads_with_the_source_logits(tmp_path, name):
    path, src = make_layout(name, tmp_path)
    family, mask, block, timecond = LAYOUTS[name]
    loaded = load_checkpoint(path)
    other = tiny_model(src.config.family, seed=99, **({"block_size": 4} if block else {}))
    assert_same_logits(loaded.model, src, other)
    cfg = loaded.config
    assert (cfg.family, cfg.mask_id, cfg.block_size, cfg.time_conditioning) == (
        family,
        mask,
        block,
        timecond,
    )
    assert (cfg.vocab_size, cfg.hidden_size, cfg.n_blocks, cfg.n_heads) == (V, 32, 2, 2)
    assert cfg.cond_dim == 8 and cfg.model_length == 16
    assert not loaded.model.training
    prov = loaded.provenance
    weights = next(p for p in path.iterdir() if p.name != "config.json")
    assert prov["format"] == "hf" and prov["source"] == str(path)
    assert prov["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert prov["family"] == family and prov["dtype"] == "float32" and prov["ema"] is True
    assert prov["config"] == cfg.to_dict()
    assert "auto_map" in prov["ignored_config_keys"] or name in ("esolm_tiny", "ar_tiny")


def test_layout_specific_keys_are_ignored_or_dropped(tmp_path):
    bd3, _ = make_layout("bd3lm_tiny", tmp_path)
    prov = load_checkpoint(bd3).provenance
    assert prov["dropped_keys"] == ["sampling_eps_max", "sampling_eps_min"]
    assert {"attn_backend", "cross_attn", "sampling_eps_min"} <= set(prov["ignored_config_keys"])
    eso, _ = make_layout("esolm_tiny", tmp_path)
    assert "hidden_dim" in load_checkpoint(eso).provenance["ignored_config_keys"]
    duo, _ = make_layout("duo_tiny", tmp_path)
    prov = load_checkpoint(duo).provenance
    assert prov["model_type"] == "duo"
    assert prov["dropped_keys"] and all(k.startswith("teacher.") for k in prov["dropped_keys"])


def test_our_format_through_load_checkpoint(tmp_path):
    src = tiny_model("esolm", seed=11)
    save_checkpoint(src, tmp_path / "ours", extra={"training": {"steps": 3}})
    loaded = load_checkpoint(tmp_path / "ours")
    assert_same_logits(loaded.model, src, tiny_model("esolm", seed=12))
    assert loaded.provenance["format"] == "dlmbench"
    assert loaded.extra == {"training": {"steps": 3}}
    save_checkpoint(tiny_model("esolm", seed=12), tmp_path / "ours")  # replaced atomically
    assert_same_logits(load_checkpoint(tmp_path / "ours").model, tiny_model("esolm", seed=12))
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]


def test_device_and_dtype_are_applied(tmp_path):
    path, src = make_layout("mdlm_tiny", tmp_path)
    loaded = load_checkpoint(path, device="cpu", dtype="fp32")
    assert loaded.provenance["dtype"] == "float32" and loaded.provenance["device"] == "cpu"
    assert_same_logits(loaded.model, src)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, dtype="bf61")
    assert "dtype 'bf61'" in one_line(err) and "bf16" in one_line(err)


@pytest.mark.parametrize("layout", ["ar_tiny", "mdlm_tiny"])
def test_bf16_parameters_load_and_run_close_to_fp32(tmp_path, layout):
    """bf16 parameters run without autocast (LayerNorm stays fp32 inside); logits agree with the
    fp32 source to bf16 precision (8 mantissa bits: ~1e-2 relative over two blocks)."""
    path, src = make_layout(layout, tmp_path)
    loaded = load_checkpoint(path, dtype=torch.bfloat16)
    assert loaded.provenance["dtype"] == "bfloat16"
    x = torch.randint(0, 32, (2, 8))
    got = loaded.model(x).float()
    want = src(x)
    torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)


# ---------------------------------------------------------------------------------------------
# Lightning .ckpt
# ---------------------------------------------------------------------------------------------


def lightning_dict(family: str, raw: DiT, ema: DiT, hp=None) -> dict:
    """A Lightning checkpoint: raw state_dict, a DIFFERENT EMA list, minimal loops, plain hp."""
    algo = {"name": family, "causal_attention": family == "ar", "time_conditioning": False}
    model = {"hidden_size": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 8, "length": 16}
    return {
        "epoch": 0,
        "global_step": 10,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": public_state(raw),
        "ema": {
            "decay": 0.9999,
            "num_updates": 10,
            "shadow_params": [p.detach().clone() for p in ema.parameters()],
        },
        "loops": {
            "fit_loop": {
                "epoch_progress": {"total": {"ready": 1, "completed": 0}},
                "epoch_loop.batch_progress": {"total": {"ready": 10, "completed": 10}},
            }
        },
        "optimizer_states": [],
        "lr_schedulers": [],
        "callbacks": {},
        "hyper_parameters": hp
        if hp is not None
        else {"config": {"model": model, "algo": algo, "data": {"tokenizer_name_or_path": "t"}}},
    }


@pytest.mark.parametrize("family", ["esolm", "ar"])
def test_lightning_yields_ema_by_default_and_state_dict_on_request(tmp_path, family):
    raw, ema = tiny_model(family, seed=21), tiny_model(family, seed=22)
    torch.save(lightning_dict(family, raw, ema), tmp_path / "model.ckpt")
    loaded = load_checkpoint(tmp_path / "model.ckpt")
    assert_same_logits(loaded.model, ema, other=raw)
    assert loaded.provenance["ema"] is True and loaded.provenance["format"] == "lightning"
    assert loaded.config.family == family and loaded.config.tokenizer == "t"
    no_ema = load_checkpoint(tmp_path / "model.ckpt", use_ema=False)
    assert_same_logits(no_ema.model, raw, other=ema)
    assert no_ema.provenance["ema"] is False


def test_lightning_without_hyper_parameters_infers_sizes(tmp_path):
    raw, ema = tiny_model("esolm", seed=21), tiny_model("esolm", seed=22)
    ckpt = lightning_dict("esolm", raw, ema, hp={})
    torch.save(ckpt, tmp_path / "bare.ckpt")
    loaded = load_checkpoint(tmp_path / "bare.ckpt")  # n_heads from the rotary buffer's length
    assert_same_logits(loaded.model, ema, other=raw)
    assert loaded.config.family == "mdlm"  # no algo name: diffusion from the AdaLN keys


def test_ema_count_mismatch_names_both_counts(tmp_path):
    raw, ema = tiny_model("esolm", seed=21), tiny_model("esolm", seed=22)
    ckpt = lightning_dict("esolm", raw, ema)
    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    torch.save(ckpt, tmp_path / "short.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "short.ckpt")
    msg = one_line(err)
    assert str(tmp_path / "short.ckpt") in msg
    assert "'ema.shadow_params' has 29 tensors" in msg and "has 30 parameters" in msg
    assert "use_ema=False" in msg
    assert load_checkpoint(tmp_path / "short.ckpt", use_ema=False).provenance["ema"] is False


def test_ema_shape_mismatch_names_first_index_name_and_shapes(tmp_path):
    raw, ema = tiny_model("esolm", seed=21), tiny_model("esolm", seed=22)
    ckpt = lightning_dict("esolm", raw, ema)
    sp = ckpt["ema"]["shadow_params"]
    sp[5], sp[6] = sp[6], sp[5]  # blocks.0.norm1.weight [32] <-> blocks.0.attn_qkv.weight
    torch.save(ckpt, tmp_path / "swapped.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "swapped.ckpt")
    msg = one_line(err)
    assert "'ema.shadow_params[5]' should be 'blocks.0.norm1.weight' with shape [32]" in msg
    assert "found [96, 32]" in msg


def test_ema_counts_at_dit_small_are_130_and_100():
    with torch.device("meta"):
        dit = DiT(DiTConfig.from_size("small", family="mdlm", vocab_size=50258))
        ar = DiT(DiTConfig.from_size("small", family="ar", vocab_size=50258))
    for model, n in ((dit, 130), (ar, 100)):
        shadow = [torch.empty_like(p) for p in model.parameters()]
        assert len(ema_state_dict(model, shadow, "x.ckpt")) == n
        with pytest.raises(CheckpointError) as err:
            ema_state_dict(model, shadow[:-1], "x.ckpt")
        assert f"has {n - 1} tensors" in one_line(err) and f"has {n} parameters" in one_line(err)


# A pickled Lightning checkpoint: hyper_parameters hold objects of classes that the loading
# environment cannot import (like omegaconf.DictConfig and a transformers tokenizer).
FAKE_MODULE = "dlmbench_test_fake_omegaconf"


def pickled_lightning(tmp_path: Path, monkeypatch) -> tuple[Path, DiT, DiT]:
    mod = types.ModuleType(FAKE_MODULE)

    class DictConfig:
        def __init__(self, content):
            self._metadata = {"object_type": dict}
            self._parent = None
            self._content = content

    class AnyNode:
        def __init__(self, val):
            self._metadata = None
            self._val = val

    class Tokenizer:
        def __init__(self):
            self.name_or_path = "gpt2"

    for cls in (DictConfig, AnyNode, Tokenizer):
        cls.__module__ = FAKE_MODULE
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)

    def node(d):
        return DictConfig({k: node(v) if isinstance(v, dict) else AnyNode(v) for k, v in d.items()})

    raw, ema = tiny_model("esolm", seed=31), tiny_model("esolm", seed=32)
    hp = {
        "config": node(
            {
                "algo": {"name": "esolm", "time_conditioning": False},
                "model": {"hidden_size": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 8},
                "data": {"tokenizer_name_or_path": "gpt2-fake"},
            }
        ),
        "tokenizer": Tokenizer(),
    }
    ckpt = lightning_dict("esolm", raw, ema, hp=hp)
    ckpt["state_dict"] = public_state(raw, inv_freq=True)
    torch.save(ckpt, tmp_path / "esolm_tiny.ckpt")
    monkeypatch.delitem(sys.modules, FAKE_MODULE)  # the loader cannot import these classes
    return tmp_path / "esolm_tiny.ckpt", raw, ema


def test_pickled_ckpt_is_refused_with_the_conversion_command(tmp_path, monkeypatch):
    path, _, _ = pickled_lightning(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = one_line(err)
    assert f"{path}: not a weights-only checkpoint" in msg
    assert f"dlmbench convert-ckpt {path} " in msg and "--trust-pickle" in msg
    assert FAKE_MODULE in msg  # the global the safe unpickler refused


def test_convert_then_load_yields_the_ema_weights(tmp_path, monkeypatch):
    path, raw, ema = pickled_lightning(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        convert_lightning_checkpoint(path, tmp_path / "out", trust_pickle=False)
    assert not (tmp_path / "out").exists()
    out = convert_lightning_checkpoint(path, tmp_path / "out", trust_pickle=True)
    doc = json.loads((out / "config.json").read_text())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert doc["source_sha256"] == sha and doc["source_file"] == "esolm_tiny.ckpt"
    assert doc["model_type"] == "EsoLM" and doc["ema"] is True
    assert {k: doc[k] for k in ("hidden_size", "n_blocks", "n_heads", "cond_dim")} == {
        "hidden_size": 32,
        "n_blocks": 2,
        "n_heads": 2,
        "cond_dim": 8,
    }
    assert (doc["vocab_size"], doc["mask_index"], doc["tokenizer"]) == (V, M, "gpt2-fake")
    tensors = load_file(str(out / "model.safetensors"))
    assert all(k.startswith("backbone.") for k in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    loaded = load_checkpoint(out)
    assert_same_logits(loaded.model, ema, other=raw)
    assert loaded.provenance["converted_from_sha256"] == sha and loaded.provenance["ema"] is True
    raw_out = convert_lightning_checkpoint(path, tmp_path / "raw", True, use_ema=False)
    assert_same_logits(load_checkpoint(raw_out).model, raw, other=ema)


def test_convert_cli_subcommand(tmp_path, monkeypatch, capsys):
    path, _, ema = pickled_lightning(tmp_path, monkeypatch)
    parser = argparse.ArgumentParser(prog="dlmbench")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert-ckpt", str(path), str(tmp_path / "cli"), "--trust-pickle"])
    assert args.fn(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert_same_logits(load_checkpoint(tmp_path / "cli").model, ema)
    args = parser.parse_args(["convert-ckpt", str(path), str(tmp_path / "no")])
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        args.fn(args)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear, one-line error each
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "nope.ckpt")
    assert f"{tmp_path / 'nope.ckpt'}: no such file or directory" in one_line(err)


def test_unknown_layouts_list_the_accepted_ones(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    path, _ = make_layout("mdlm_tiny", tmp_path)
    for bad, found in (
        (tmp_path / "empty", "without config.json; found ['weights.pt']"),
        (tmp_path / "notes.txt", "a '.txt' file"),
        (path / "model.safetensors", f"Did you mean the directory {path}?"),
    ):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        msg = one_line(err)
        assert msg.startswith(f"{bad}: unknown checkpoint layout") and found in msg
        assert "Accepted layouts: (1) a dlmbench directory" in msg and "convert-ckpt" in msg


def test_hf_dir_without_weights(tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(mdlm_config()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(d)
    assert "expected model.safetensors or pytorch_model.bin, found ['config.json']" in one_line(err)


def test_missing_unexpected_and_misshaped_keys_are_reported_together_sorted(tmp_path):
    src = tiny_model("mdlm", seed=1)
    state = public_state(src)
    del state["backbone.blocks.1.norm2.weight"], state["backbone.blocks.0.attn_out.weight"]
    state["backbone.zz_extra"] = torch.ones(2)
    state["backbone.aa_extra"] = torch.ones(2)
    state["backbone.blocks.0.mlp.0.bias"] = torch.ones(127)
    path = write_hf(tmp_path / "bad", mdlm_config(), state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = one_line(err)
    assert msg.startswith(str(path / "model.safetensors"))
    assert "missing keys ['blocks.0.attn_out.weight', 'blocks.1.norm2.weight']" in msg
    assert "unexpected keys ['aa_extra', 'zz_extra']" in msg
    assert "blocks.0.mlp.0.bias: expected [128], found [127]" in msg


def test_cond_dim_129_config_with_128_wide_tensors_names_both_values(tmp_path):
    path, _ = make_layout("mdlm_tiny", tmp_path)
    (path / "config.json").write_text(json.dumps(mdlm_config(cond_dim=129)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = one_line(err)
    assert str(path / "config.json") in msg
    assert "'cond_dim' is 129 but sigma_map.mlp.0.weight has shape [8, 256] (cond_dim 8)" in msg


def test_width_disagreements_report_the_field_that_was_read(tmp_path):
    path, _ = make_layout("mdlm_tiny", tmp_path)
    (path / "config.json").write_text(json.dumps(mdlm_config(hidden_dim=64, n_blocks=3)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = one_line(err)
    assert "'hidden_dim' is 64 but vocab_embed.embedding has shape [33, 32] (hidden_size 32)" in msg
    assert "'n_blocks' is 3 but the weights have 2 blocks" in msg  # reported together
    eso, _ = make_layout("esolm_tiny", tmp_path)  # Eso-LM: hidden_size is read, hidden_dim not
    (eso / "config.json").write_text(json.dumps(esolm_config(hidden_size=768, hidden_dim=32)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(eso)
    assert "'hidden_size' is 768 but vocab_embed.embedding has shape [33, 32]" in one_line(err)


def test_wrong_mask_index(tmp_path):
    path, _ = make_layout("esolm_tiny", tmp_path)
    (path / "config.json").write_text(json.dumps(esolm_config(mask_index=V)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = one_line(err)
    assert str(path / "config.json") in msg
    assert f"'mask_index' is {V}; it must lie in [0, {V - 1}]" in msg
    # A GPT-2 sized vocabulary: ids below 50257 are real tokens, so the mask must be 50257.
    state = {
        "vocab_embed.embedding": torch.empty(50258, 32),
        "blocks.0.norm1.weight": torch.empty(32),
    }
    fields = {"source_family": "ar", "n_heads": 2, "mask_index": 50256}
    with pytest.raises(CheckpointError) as err:
        config_from_fields(fields, state, "eso/config.json")
    assert "'mask_index' is 50256; a vocabulary of 50258 is gpt2 whose mask id is 50257" in str(
        err.value
    )


def test_gpt2_and_bert_vocab_defaults():
    def state(v):
        return {
            "vocab_embed.embedding": torch.empty(v, 32),
            "blocks.0.norm1.weight": torch.empty(32),
        }

    cfg = config_from_fields({"n_heads": 2, "source_family": "ar"}, state(50258), "x")
    assert (cfg.mask_id, cfg.bos_index, cfg.eos_index, cfg.tokenizer) == (
        50257,
        50256,
        50256,
        "gpt2",
    )
    cfg = config_from_fields({"n_heads": 2, "source_family": "ar"}, state(30522), "x")
    assert (cfg.mask_id, cfg.bos_index, cfg.eos_index) == (103, 101, 102)
    with pytest.raises(CheckpointError) as err:
        config_from_fields({"n_heads": 2}, {"vocab_embed.embedding": torch.empty(9, 4)}, "y")
    assert "the weights have no blocks.{i}.* keys" in one_line(err)


def test_family_that_contradicts_the_keys(tmp_path):
    src = tiny_model("ar", seed=6)
    path = write_hf(tmp_path / "ar_as_mdlm", mdlm_config(), public_state(src))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "the family is 'mdlm' but the weights have no sigma_map/adaLN_modulation" in one_line(
        err
    )
    (path / "config.json").write_text(json.dumps(mdlm_config(model_type="sedd")))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "'model_type' is 'sedd'; accepted: ar, bd3lm, duo, EsoLM, mdlm" in one_line(err)


def test_rotary_buffer_is_recomputed_and_compared(tmp_path):
    src = tiny_model("mdlm", seed=1)
    state = public_state(src)
    state["backbone.rotary_emb.inv_freq"] = ref_inv_freq(16, base=500000.0)
    path = write_hf(tmp_path / "rope", mdlm_config(), state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = one_line(err)
    assert "key 'rotary_emb.inv_freq' differs from base-10000 rotary: first at index 1," in msg
    state["backbone.rotary_emb.inv_freq"] = ref_inv_freq(8)  # 4 entries: head dim 8, 4 heads
    path = write_hf(tmp_path / "heads", mdlm_config(), state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "'n_heads' is 2 but rotary_emb.inv_freq has 4 entries" in one_line(err)


def test_n_heads_from_the_rotary_buffer_or_a_clear_error(tmp_path):
    src = tiny_model("mdlm", seed=1)
    cfg = mdlm_config()
    del cfg["n_heads"]
    path = write_hf(tmp_path / "noheads", cfg, public_state(src))
    assert_same_logits(load_checkpoint(path).model, src)
    path = write_hf(tmp_path / "noheads_norope", cfg, public_state(src, inv_freq=False))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "'n_heads' is missing and there is no rotary_emb.inv_freq" in one_line(err)


class NotATensor:
    pass


def test_pickled_bin_is_refused(tmp_path):
    src = tiny_model("mdlm", seed=1)
    state = public_state(src)
    state["backbone.payload"] = NotATensor()
    d = tmp_path / "binpickle"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(mdlm_config()))
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(d)
    msg = one_line(err)
    assert f"{d / 'pytorch_model.bin'}: not a weights-only pickle" in msg
    assert "NotATensor" in msg and "save_file" in msg


def test_lightning_without_state_dict(tmp_path):
    torch.save({"ema": {}, "epoch": 1}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "odd.ckpt")
    assert "key 'state_dict' missing" in one_line(err) and "['ema', 'epoch']" in one_line(err)
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "junk.ckpt")
    assert f"{tmp_path / 'junk.ckpt'}:" in one_line(err)


# ---------------------------------------------------------------------------------------------
# random:<size> and resolve_model
# ---------------------------------------------------------------------------------------------


def test_random_models_are_seeded_and_non_zero():
    a = build_random_model("tiny", "bd3lm", vocab_size=V, model_length=16, block_size=4)
    b = build_random_model("tiny", "bd3lm", vocab_size=V, model_length=16, block_size=4)
    assert_same_logits(a.model, b.model)
    c = build_random_model("tiny", "bd3lm", vocab_size=V, model_length=16, seed=1)
    assert_same_logits(a.model, b.model, other=c.model)
    assert all(p.abs().max() > 0 for p in a.model.parameters())
    assert a.config.block_size == 4 and a.provenance["format"] == "random"
    assert a.provenance["source"] == "random:tiny" and a.provenance["seed"] == 0


def test_resolve_model_accepts_paths_and_random_specs(tmp_path):
    path, src = make_layout("esolm_tiny", tmp_path)
    got = resolve_model(str(path), family="esolm", seq_len=16)
    assert_same_logits(got.model, src)
    rnd = resolve_model("random:cpu-s", family="ar", vocab_size=50258, seq_len=64)
    assert rnd.config.hidden_size == 128 and rnd.config.n_blocks == 4
    assert rnd.config.bos_index == 50256 and rnd.config.mask_id == 50257
    assert rnd.provenance["dtype"] == "float32" and rnd.provenance["format"] == "random"


def test_resolve_model_errors(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_model("random:smal", family="mdlm", seq_len=16)
    assert "Unknown model size 'smal'. Did you mean: small" in one_line(err)
    with pytest.raises(CheckpointError) as err:
        resolve_model("random:tiny", family="mdml", seq_len=16)
    assert "unknown family 'mdml'. Did you mean: mdlm" in one_line(err)
    path, _ = make_layout("mdlm_tiny", tmp_path)
    with pytest.raises(CheckpointError) as err:
        resolve_model(str(path), family="esolm", seq_len=16)
    assert "checkpoint family is 'mdlm'" in one_line(err) and "expects 'esolm'" in one_line(err)


def test_convert_overrides_fill_fields_the_file_lacks(tmp_path):
    raw, ema = tiny_model("esolm", seed=41), tiny_model("esolm", seed=42)
    ckpt = lightning_dict("esolm", raw, ema, hp={})
    ckpt["state_dict"] = public_state(raw, inv_freq=False)
    torch.save(ckpt, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError) as err:
        convert_lightning_checkpoint(tmp_path / "bare.ckpt", tmp_path / "out", True)
    assert "'n_heads' is missing" in one_line(err) and "--n-heads" in one_line(err)
    over = {"n_heads": 2, "source_family": "esolm"}
    out = convert_lightning_checkpoint(
        tmp_path / "bare.ckpt", tmp_path / "out", True, overrides=over
    )
    loaded = load_checkpoint(out)
    assert loaded.config.family == "esolm" and loaded.provenance["model_type"] == "EsoLM"
    assert_same_logits(loaded.model, ema, other=raw)


def test_plain_reads_mappings_and_skips_unresolvable_values():
    from harness.model.checkpoints import _plain

    class Interpolating:  # like an OmegaConf DictConfig holding ${hydra:...}
        def keys(self):
            return ["ok", "bad"]

        def __getitem__(self, k):
            if k == "bad":
                raise ValueError("cannot resolve ${hydra:runtime.cwd}")
            return {"n": 1}

    assert _plain({"a": Interpolating(), "t": torch.tensor(3)}) == {
        "a": {"ok": {"n": 1}, "bad": None},
        "t": 3,
    }
