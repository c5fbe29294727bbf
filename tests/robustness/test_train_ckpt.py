"""Issue 11: training and checkpoint conversion never replace folders they should not, and the
loaders read what the reference checkpoints actually store.

Every test names its finding in the docstring. Everything is written under ``tmp_path``; the
shipped ``checkpoints/`` folder is never touched (one test checks that it is left as it was).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from dlmcore.configio import ConfigError
from harness.model.checkpoints import (
    CheckpointError,
    add_parser,
    convert_lightning_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from harness.train import loop
from harness.train.loop import TrainConfig, load_config
from samplers.ar import AR, ARConfig
from tests.conftest import TINY, tiny_model

V = TINY["vocab_size"]
REPO = Path(__file__).resolve().parents[2]


def one_line(err: pytest.ExceptionInfo) -> str:
    return " ".join(str(err.value).split())


def tree(path: Path) -> dict[str, int]:
    """Relative file paths under ``path`` with their sizes (a cheap fingerprint)."""
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Finding 1: output names and replacing folders (train)
# ---------------------------------------------------------------------------------------------

BAD_NAMES = ["", ".", "..", "a/b", "../x", "x/..", "a..b", "/abs", "nul\0name", " pad "]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_train_refuses_names_that_escape_the_output_folder(tmp_path, name):
    """Finding 1: ``name: ""``/``.``/``..``/names with ``/``, ``..`` or NUL made the output
    folder ``out_dir`` itself (default: ``checkpoints/``, every shipped model and the
    tokenizer) or a folder outside it, which the run then replaced. They are a ConfigError
    naming the problem, raised by ``load_config`` before anything is written."""
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(  # JSON strings are YAML double-quoted scalars (NUL as \u0000)
        f"name: {json.dumps(name)}\nfamily: mdlm\nmodel_size: tiny\nseq_len: 16\n"
        f"out_dir: {tmp_path / 'out'}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg_path)
    assert any("'name' is" in p for p in err.value.problems)
    assert "plain folder name" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_train_api_refuses_bad_names_before_writing(tmp_path, name, monkeypatch):
    """Finding 1: ``train()`` called with a hand-built config (no ``load_config``) checks the
    name too, before setup writes the temp log beside the output folder."""
    monkeypatch.setattr(loop, "setup", lambda *a, **k: pytest.fail("setup ran"))
    cfg = TrainConfig(name=name, family="mdlm", out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="'name' is"):
        loop.train(cfg)
    assert not (tmp_path / "out").exists()


def test_default_out_dir_with_dot_name_leaves_shipped_checkpoints_alone(monkeypatch):
    """Finding 1: with the default ``out_dir: checkpoints`` and ``name: .`` a run used to
    replace the whole shipped ``checkpoints/`` folder (models and tokenizer). The CLI now
    exits 2 with the problem and ``checkpoints/`` is unchanged."""
    before = tree(REPO / "checkpoints")
    assert before, "the shipped checkpoints folder is expected to exist"
    monkeypatch.setattr(loop, "setup", lambda *a, **k: pytest.fail("setup ran"))
    for name in (".", ".."):
        cfg = TrainConfig(name=name, family="mdlm")
        assert any("'name' is" in p for p in loop.output_problems(cfg, overwrite=True))
        with pytest.raises(ConfigError):
            loop.train(cfg, overwrite=True)
    assert tree(REPO / "checkpoints") == before


def test_cli_refuses_bad_name_with_exit_2(tmp_path, capsys, monkeypatch):
    """Finding 1: ``python -m harness.train CONFIG name=..`` prints the problem, exits 2."""
    monkeypatch.setattr(loop, "setup", lambda *a, **k: pytest.fail("setup ran"))
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"name: ok\nfamily: mdlm\nout_dir: {tmp_path / 'out'}\n")
    assert loop.main([str(cfg_path), "name=.."]) == 2
    assert "'name' is '..'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _existing_checkpoint(path: Path) -> dict[str, int]:
    save_checkpoint(tiny_model("mdlm", seed=3), path, extra={"marker": "old"})
    return tree(path)


def test_existing_output_folder_needs_overwrite(tmp_path, capsys, monkeypatch):
    """Finding 1: training replaced an existing output folder silently. Without
    ``--overwrite`` it is now one clear error naming --overwrite and another name, from both
    the API and the CLI, and the folder is unchanged."""
    monkeypatch.setattr(loop, "setup", lambda *a, **k: pytest.fail("setup ran"))
    out = tmp_path / "out" / "run"
    before = _existing_checkpoint(out)
    cfg = TrainConfig(name="run", family="mdlm", out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError) as err:
        loop.check_outputs(cfg)
    msg = one_line(err)
    assert "already exists" in msg and "--overwrite" in msg and "another 'name'" in msg
    assert loop.output_problems(cfg, overwrite=True) == []
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"name: run\nfamily: mdlm\nout_dir: {tmp_path / 'out'}\n")
    assert loop.main([str(cfg_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert tree(out) == before
    parser = argparse.ArgumentParser()
    loop.add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["train", str(cfg_path), "--overwrite"]).overwrite is True
    assert parser.parse_args(["train", str(cfg_path)]).overwrite is False


def test_overwrite_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path):
    """Finding 1: even with ``--overwrite``, a folder that does not hold a dlmbench checkpoint
    (e.g. ``out_dir: /``, ``name: home``) is never replaced; an empty folder needs no flag."""
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "keep.txt").write_text("x")
    (tmp_path / "out" / "empty").mkdir()
    cfg = TrainConfig(name="data", family="mdlm", out_dir=str(tmp_path / "out"))
    probs = loop.output_problems(cfg, overwrite=True)
    assert len(probs) == 1 and "not a dlmbench checkpoint" in probs[0]
    empty = TrainConfig(name="empty", family="mdlm", out_dir=str(tmp_path / "out"))
    assert loop.output_problems(empty) == []


def test_snapshot_folder_is_guarded_like_the_output(tmp_path):
    """Finding 1: the mid-run EMA snapshot also replaced its folder unconditionally."""
    snap = tmp_path / "snap"
    _existing_checkpoint(snap)
    cfg = TrainConfig(
        name="run",
        family="mdlm",
        out_dir=str(tmp_path / "out"),
        steps=10,
        warmup_steps=1,
        snapshot_step=5,
        snapshot_dir=str(snap),
    )
    probs = loop.output_problems(cfg)
    assert len(probs) == 1 and "snapshot folder" in probs[0] and "--overwrite" in probs[0]
    assert loop.output_problems(cfg, overwrite=True) == []
    same = TrainConfig(**{**cfg.__dict__, "snapshot_dir": str(tmp_path / "out" / "run")})
    assert any("is the output folder" in p for p in loop.output_problems(same, overwrite=True))


def test_overwrite_swaps_in_a_complete_folder(tmp_path):
    """Finding 1: with --overwrite the new checkpoint (and its train_log.csv) is written to a
    temp sibling and renamed into place; only the old output folder itself is removed, no temp
    folder is left behind, and a sibling folder is untouched."""
    parent = tmp_path / "out"
    _existing_checkpoint(parent / "run")
    sibling = parent / "other"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("keep")
    log = parent / ".run.train_log.csv"
    log.write_text("step\n1\n")
    save_checkpoint(
        tiny_model("mdlm", seed=4), parent / "run", extra={"marker": "new"}, files={"x.csv": log}
    )
    doc = json.loads((parent / "run" / "config.json").read_text())
    assert doc["marker"] == "new" and (parent / "run" / "x.csv").read_text() == "step\n1\n"
    assert sorted(p.name for p in parent.iterdir()) == ["other", "run"]
    assert (sibling / "keep.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------
# Finding 1: convert-ckpt destination
# ---------------------------------------------------------------------------------------------

FAKE_MODULE = "dlmbench_robustness_fake_tokenizers"


def pickled_ar_ckpt(tmp_path: Path, monkeypatch, tok_ids: dict | None, importable: bool) -> Path:
    """A pickled Lightning AR checkpoint whose hyper_parameters hold a tokenizer object.

    ``importable``: the tokenizer class stays importable while converting (a real object whose
    ``bos_token_id``/``eos_token_id`` are properties), else it is stubbed (state only).
    """
    mod = types.ModuleType(FAKE_MODULE)

    class StateTokenizer:  # ids stored as attributes: read from the pickled state
        def __init__(self, ids):
            self.name_or_path = "custom-bpe"
            for k, v in (ids or {}).items():
                setattr(self, k, v)

    class PropTokenizer:  # ids computed from the vocabulary, like transformers tokenizers
        def __init__(self, ids):
            self._ids = dict(ids or {})

        @property
        def bos_token_id(self):
            return self._ids.get("bos_token_id")

        @property
        def eos_token_id(self):
            return self._ids.get("eos_token_id")

    for cls in (StateTokenizer, PropTokenizer):
        cls.__module__ = FAKE_MODULE
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)
    raw = tiny_model("ar", seed=51)
    model = {"hidden_size": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 8, "length": 16}
    hp = {
        "config": {"algo": {"name": "ar", "causal_attention": True}, "model": model},
        "tokenizer": (PropTokenizer if importable else StateTokenizer)(tok_ids),
    }
    ckpt = {
        "state_dict": {"backbone." + k: v.clone() for k, v in raw.state_dict().items()},
        "hyper_parameters": hp,
    }
    path = tmp_path / "ar_custom.ckpt"
    torch.save(ckpt, path)
    if not importable:
        monkeypatch.delitem(sys.modules, FAKE_MODULE)
    return path


def test_convert_refuses_an_existing_destination_without_overwrite(tmp_path, monkeypatch):
    """Finding 1: ``convert-ckpt`` replaced any folder it was pointed at. An existing non-empty
    destination is refused unless --overwrite; with it, only a checkpoint folder (config.json)
    is replaced; an empty folder is fine."""
    src = pickled_ar_ckpt(tmp_path, monkeypatch, {"bos_token_id": 3}, importable=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError) as err:
        convert_lightning_checkpoint(src, docs, True)
    assert "--overwrite" in one_line(err)
    with pytest.raises(CheckpointError) as err:
        convert_lightning_checkpoint(src, docs, True, overwrite=True)
    assert "never replaced" in one_line(err)
    assert (docs / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar_custom.ckpt", "docs"]
    (tmp_path / "empty").mkdir()
    out = convert_lightning_checkpoint(src, tmp_path / "empty", True)
    assert (out / "config.json").is_file()
    parser = argparse.ArgumentParser(prog="dlmbench")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert-ckpt", str(src), str(out), "--trust-pickle"])
    with pytest.raises(CheckpointError, match="--overwrite"):
        args.fn(args)
    args = parser.parse_args(["convert-ckpt", str(src), str(out), "--trust-pickle", "--overwrite"])
    assert args.fn(args) == 0


# ---------------------------------------------------------------------------------------------
# Finding 2a: MDLM keeps time_conditioning at the top level of its config
# ---------------------------------------------------------------------------------------------


def mdlm_lightning(tmp_path: Path, config: dict) -> Path:
    """A weights-only Lightning MDLM checkpoint in kuleshov-group/mdlm's key layout."""
    raw = tiny_model("mdlm", seed=61)
    model = {"hidden_size": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 8, "length": 16}
    ckpt = {
        "state_dict": {"backbone." + k: v.clone() for k, v in raw.state_dict().items()},
        "hyper_parameters": {"config": {"model": model, **config}},
    }
    path = tmp_path / "mdlm.ckpt"
    torch.save(ckpt, path)
    return path


def test_mdlm_top_level_time_conditioning_is_read(tmp_path):
    """Finding 2a: kuleshov-group/mdlm stores ``time_conditioning`` at the top level of the
    hyper-parameter config (beside ``backbone``, ``parameterization``, ``T``), not under
    ``algo``; it was ignored, so a time-conditioned MDLM loaded with sigma = 0."""
    path = mdlm_lightning(
        tmp_path,
        {"backbone": "dit", "parameterization": "subs", "T": 0, "time_conditioning": True},
    )
    assert load_checkpoint(path).config.time_conditioning is True


def test_algo_time_conditioning_still_wins_and_default_is_off(tmp_path):
    """Finding 2a: ``algo.time_conditioning`` (bd3lms/Eso-LMs layout) takes precedence over a
    top-level value; absent everywhere, conditioning stays off."""
    algo = {"name": "mdlm", "time_conditioning": False}
    path = mdlm_lightning(tmp_path, {"algo": algo, "time_conditioning": True})
    assert load_checkpoint(path).config.time_conditioning is False
    path = mdlm_lightning(tmp_path, {"backbone": "dit"})
    assert load_checkpoint(path).config.time_conditioning is False


# ---------------------------------------------------------------------------------------------
# Finding 2b: BOS/EOS from the pickled tokenizer and --bos-index/--eos-index
# ---------------------------------------------------------------------------------------------


def run_ar(out: Path) -> torch.Tensor:
    model = load_checkpoint(out).model
    sampler = AR(ARConfig())
    res = sampler.sample(model, batch_size=2, seq_len=6, generator=torch.Generator().manual_seed(0))
    return res.tokens


@pytest.mark.parametrize("importable", [False, True])
def test_convert_reads_bos_eos_from_the_pickled_tokenizer(tmp_path, monkeypatch, importable):
    """Finding 2b: ``convert-ckpt`` ignored the tokenizer pickled in the hyper-parameters, so a
    vocabulary other than GPT-2/BERT got no BOS and the AR sampler refused the model. Its
    ``bos_token_id``/``eos_token_id`` (attribute state or properties) are now recorded."""
    ids = {"bos_token_id": 7, "eos_token_id": 8}
    src = pickled_ar_ckpt(tmp_path, monkeypatch, ids, importable=importable)
    out = convert_lightning_checkpoint(src, tmp_path / "conv", True)
    doc = json.loads((out / "config.json").read_text())
    assert (doc["bos_index"], doc["eos_index"]) == (7, 8)
    tokens = run_ar(out)
    assert tokens.shape == (2, 6) and (tokens[:, 0] == 7).all()


def test_convert_bos_eos_flags_override_the_tokenizer(tmp_path, monkeypatch):
    """Finding 2b: ``--bos-index``/``--eos-index`` did not exist; they set the ids (winning over
    the pickled tokenizer's) and an out-of-range id is a clear error."""
    src = pickled_ar_ckpt(tmp_path, monkeypatch, {"bos_token_id": 7}, importable=False)
    parser = argparse.ArgumentParser(prog="dlmbench")
    add_parser(parser.add_subparsers(dest="command", required=True))
    base = ["convert-ckpt", str(src), str(tmp_path / "cli"), "--trust-pickle"]
    args = parser.parse_args([*base, "--bos-index", "4", "--eos-index", "5"])
    assert args.fn(args) == 0
    doc = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (doc["bos_index"], doc["eos_index"]) == (4, 5)
    assert (run_ar(tmp_path / "cli")[:, 0] == 4).all()
    args = parser.parse_args([*base[:2], str(tmp_path / "bad"), base[3], "--bos-index", str(V)])
    with pytest.raises(CheckpointError) as err:
        args.fn(args)
    assert f"'bos_index' is {V}" in one_line(err)
    assert not (tmp_path / "bad").exists()


def test_convert_without_tokenizer_ids_keeps_the_old_behaviour(tmp_path, monkeypatch):
    """Finding 2b: a tokenizer without ids leaves BOS/EOS to the known-vocabulary defaults
    (none for this vocabulary), as before."""
    src = pickled_ar_ckpt(tmp_path, monkeypatch, None, importable=False)
    out = convert_lightning_checkpoint(src, tmp_path / "conv", True)
    doc = json.loads((out / "config.json").read_text())
    assert doc["bos_index"] is None and doc["eos_index"] is None


# ---------------------------------------------------------------------------------------------
# Finding 2c: BD3-LM past the checkpoint's model_length (context_window)
# ---------------------------------------------------------------------------------------------

W_TRAINED, LB, BOS = 8, 4, 3


class WindowOracle:
    """The uncached reference behaviour, written independently of the sampler: every denoiser
    call recomputes on the LAST ``window`` rows only, block-causal, positions 0 … W − 1."""

    def __init__(self, model, window: int):
        self.model, self.window = model, window

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, x, *, attn_mask=None, logits=None):
        x = x[:, -self.window :]
        n = x.shape[1]
        mask = self.model.block_causal_mask(n, LB, x.device)
        return self.model.forward(x, attn_mask=mask, logits=logits)


def bd3_model():
    return tiny_model("bd3lm", seed=71, model_length=W_TRAINED, block_size=LB, bos_index=BOS)


def bd3_sample(model, L, seed=5, **kw):
    from samplers.bd3lm_block import BD3LMConfig, BD3LMSampler

    sampler = BD3LMSampler(BD3LMConfig(block_size=LB, steps_per_block=3, **kw))
    res = sampler.sample(
        model, batch_size=3, seq_len=L, generator=torch.Generator().manual_seed(seed)
    )
    return res, sampler


@pytest.mark.parametrize("cache", ["efficient", "reference", "none"])
def test_context_window_options_agree_within_model_length(cache):
    """Finding 2c: with seq_len <= model_length the window never slides, so ``full`` and
    ``sliding`` give identical tokens and calls; ``info`` says which option was used."""
    model = bd3_model()
    full, _ = bd3_sample(model, W_TRAINED, cache=cache, context_window="full")
    slide, _ = bd3_sample(model, W_TRAINED, cache=cache, context_window="sliding")
    assert torch.equal(full.tokens, slide.tokens) and full.calls == slide.calls
    assert full.info["context_window"] == "full" and slide.info["context_window"] == "sliding"
    assert slide.info["context_rows"] == W_TRAINED and slide.info["context_slides"] is False


@pytest.mark.parametrize("mode", ["ancestral", "first_hitting"])
@pytest.mark.parametrize("cache", ["efficient", "reference", "none"])
def test_sliding_window_equals_the_recomputing_oracle(cache, mode):
    """Finding 2c: past model_length bd3lms slides its window (the last model_length rows,
    positions renumbered) while dlmbench attended the whole prefix. ``context_window:
    sliding`` now equals an uncached oracle that recomputes each call on the last
    model_length rows with positions 0 … W − 1, in every cache mode; ``full`` (the default)
    differs from it, and the row's info says ``sliding`` with W rows."""
    model, L = bd3_model(), 4 * W_TRAINED
    oracle, _ = bd3_sample(WindowOracle(model, W_TRAINED), L, cache="none", mode=mode)
    got, sampler = bd3_sample(model, L, cache=cache, mode=mode, context_window="sliding")
    assert torch.equal(got.tokens, oracle.tokens)
    assert (got.tokens[:, 0] == BOS).all() and not (got.tokens == model.config.mask_id).any()
    full, _ = bd3_sample(model, L, cache=cache, mode=mode)
    assert full.info["context_window"] == "full" and full.info["context_rows"] == L
    assert not torch.equal(full.tokens, oracle.tokens)  # the option matters past W
    assert got.info["context_window"] == "sliding" and got.info["context_rows"] == W_TRAINED
    assert got.info["context_slides"] is True
    assert max(c[2] for c in got.calls) <= W_TRAINED  # no call sees more than W rows
    if mode == "first_hitting":  # deterministic call count: the analytic list is exact
        assert got.calls == sampler.expected_calls(model.config, batch_size=3, seq_len=L)
    # An integer window is the same as 'sliding' at that many rows.
    as_int, _ = bd3_sample(model, L, cache=cache, mode=mode, context_window=W_TRAINED)
    assert torch.equal(as_int.tokens, got.tokens)


def test_context_window_values_are_checked():
    """Finding 2c: ``context_window`` accepts full, sliding or a multiple of block_size."""
    from dlmcore.configio import from_dict
    from samplers import SamplerError
    from samplers.bd3lm_block import BD3LMConfig, BD3LMSampler

    assert from_dict(BD3LMConfig, {"block_size": 4, "context_window": 8}).context_window == 8
    for bad in ("window", 6, 0, True):
        with pytest.raises(ConfigError, match="context_window"):
            from_dict(BD3LMConfig, {"block_size": 4, "context_window": bad})
    model = tiny_model("bd3lm", model_length=6, block_size=LB)  # W = 6 is not a multiple of 4
    sampler = BD3LMSampler(BD3LMConfig(block_size=LB, context_window="sliding"))
    with pytest.raises(SamplerError, match="not a multiple of block_size"):
        sampler.sample(model, batch_size=1, seq_len=16, generator=torch.Generator())


def test_the_results_row_says_which_context_window_was_used(tmp_path):
    """Finding 2c: the row must say whether the BD3-LM prefix slid (``p_context_window``) and how
    many rows a block attended (``context_rows``)."""
    from harness import results
    from harness.run.sweep import run_experiment
    from tests.harness.run.test_runner import write_config

    path = write_config(
        tmp_path,
        checkpoints={
            "tiny": {"path": "random:tiny", "vocab_size": 33, "model": {"model_length": 8}}
        },
        samplers=[
            {"sampler": "bd3lm", "params": {"block_size": 4, "context_window": ["full", "sliding"]}}
        ],
        seq_lens=[16],
        batch_sizes=[1],
        timing={"repeats": 1, "warmup": 1},
    )
    df = results.load_results(run_experiment(path, progress=False))
    assert list(df["status"]) == ["ok", "ok"]
    rows = dict(zip(df["p_context_window"], df["context_rows"], strict=True))
    assert rows == {"full": 16, "sliding": 8}
