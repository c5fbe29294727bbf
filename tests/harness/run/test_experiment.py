"""Experiment configs: grid/zip expansion, cell hashing, overrides, and rejection of bad configs.

Every malformed config must be rejected by both ``validate`` and ``run`` with exit code 2 and a
message naming the problem, before any cell runs and without creating a results folder.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from harness import cli
from harness.model.checkpoints import save_checkpoint
from harness.run.experiment import (
    apply_overrides,
    expand_cells,
    load_experiment,
    run_id_for,
    stable_hash,
    validate,
)
from samplers.base import SAMPLERS
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("fake_samplers")


def base_config(out: Path) -> dict:
    return {
        "name": "t",
        "checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33}},
        "samplers": [{"sampler": "fake", "params": {"num_steps": 2}}],
        "seq_lens": [16],
        "batch_sizes": [1],
        "seeds": [0],
        "timing": {"repeats": 2, "warmup": 1},
        "output_dir": str(out),
    }


def cells_of(cfg: dict):
    exp, cells, problems = validate(cfg)
    assert not problems, problems
    return exp, cells


# --------------------------------------------------------------------------------------------
# Grid and zip expansion
# --------------------------------------------------------------------------------------------


def test_params_lists_form_a_cartesian_product(tmp_path):
    cfg = base_config(tmp_path)
    cfg["samplers"][0]["params"] = {"num_steps": [1, 2, 4], "top_p": [0.9, 1.0]}
    _, cells = cells_of(cfg)
    got = [(c.config.num_steps, c.config.top_p) for c in cells]
    assert got == [(n, p) for n in (1, 2, 4) for p in (0.9, 1.0)]


def test_zip_groups_move_together_and_multiply_with_params(tmp_path):
    cfg = base_config(tmp_path)
    cfg["samplers"][0]["params"] = {"top_p": [0.9, 1.0]}
    cfg["samplers"][0]["zip"] = [{"num_steps": [1, 4], "temperature": [0.5, 2.0]}]
    _, cells = cells_of(cfg)
    got = sorted((c.config.top_p, c.config.num_steps, c.config.temperature) for c in cells)
    assert got == sorted(
        (p, n, t) for p in (0.9, 1.0) for n, t in ((1, 0.5), (4, 2.0))
    )  # pairs never split


def test_list_typed_field_takes_a_list_as_one_value_and_a_list_of_lists_as_an_axis(tmp_path):
    cfg = base_config(tmp_path)
    cfg["samplers"][0]["params"] = {"tags": [1, 2]}
    _, cells = cells_of(cfg)
    assert [c.config.tags for c in cells] == [[1, 2]] or [c.config.tags for c in cells] == [(1, 2)]
    cfg["samplers"][0]["params"] = {"tags": [[1], [2, 3]]}
    _, cells = cells_of(cfg)
    assert [tuple(c.config.tags) for c in cells] == [(1,), (2, 3)]


def test_cells_cover_every_axis_in_run_order(tmp_path):
    cfg = base_config(tmp_path)
    cfg.update(seq_lens=[32, 16], batch_sizes=[4, 1, 2], seeds=[1, 0])
    cfg["samplers"].append({"name": "other", "sampler": "fake", "params": {"num_steps": [1, 3]}})
    _, cells = cells_of(cfg)
    assert len(cells) == (1 + 2) * 2 * 3 * 2
    first = [(c.seq_len, c.batch_size, c.seed) for c in cells if c.label == "fake"]
    assert first == [(L, b, s) for L in (16, 32) for b in (1, 2, 4) for s in (1, 0)]
    assert [c.index for c in cells] == list(range(len(cells)))
    assert len({c.cell_id for c in cells}) == len(cells)


def test_profile_mode_sets_the_sampler_profile_field(tmp_path):
    cfg = base_config(tmp_path)
    cfg["timing"]["mode"] = "profile"
    _, cells = cells_of(cfg)
    assert all(c.config.profile for c in cells)
    cfg["timing"]["mode"] = "full"
    _, cells = cells_of(cfg)
    assert not any(c.config.profile for c in cells)


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def test_stable_hash_is_sha256_of_canonical_json():
    obj = {"b": [1, 2.5, None], "a": {"y": True, "x": "s"}}
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    assert stable_hash(obj, 64) == hashlib.sha256(text.encode()).hexdigest()
    assert stable_hash({"a": {"x": "s", "y": True}, "b": [1, 2.5, None]}) == stable_hash(obj)


def _ids(cfg):
    return {
        (c.seq_len, c.batch_size, c.seed, c.config.num_steps): c.cell_id for c in cells_of(cfg)[1]
    }


def test_cell_id_ignores_order_labels_names_and_explicit_defaults(tmp_path):
    cfg = base_config(tmp_path)
    cfg.update(seq_lens=[16, 32], batch_sizes=[1, 2], seeds=[0, 1])
    cfg["samplers"][0]["params"] = {"num_steps": [1, 2], "top_p": 1.0}
    ref = _ids(cfg)
    alt = copy.deepcopy(cfg)
    alt.update(seq_lens=[32, 16], batch_sizes=[2, 1], seeds=[1, 0], output_dir=str(tmp_path / "x"))
    alt["samplers"][0] = {
        "name": "renamed",
        "params": {"top_p": 1.0, "temperature": 1.0, "num_steps": [2, 1]},  # temperature=default
        "checkpoint": "other_name",
        "sampler": "fake",
    }
    alt["checkpoints"] = {"other_name": {"vocab_size": 33, "path": "random:tiny"}}
    assert _ids(alt) == ref


@pytest.mark.parametrize(
    "change",
    [
        {"timing": {"repeats": 3, "warmup": 1}},
        {"timing": {"repeats": 2, "warmup": 1, "mode": "profile"}},
        {"checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 34}}},
        {"checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33, "init_seed": 1}}},
        {"samplers": [{"sampler": "fake", "params": {"num_steps": 2, "top_p": 0.9}}]},
    ],
)
def test_cell_id_changes_with_anything_that_changes_the_measurement(tmp_path, change):
    cfg = base_config(tmp_path)
    changed = {**copy.deepcopy(cfg), **change}
    assert set(_ids(cfg).values()).isdisjoint(_ids(changed).values())


def test_cell_id_changes_with_dtype(tmp_path):
    # bfloat16 is refused on cpu at validation, so change the dtype on a built cell.
    cell = cells_of(base_config(tmp_path))[1][0]
    assert dataclasses.replace(cell, dtype="bfloat16").cell_id != cell.cell_id


def test_cell_id_differs_per_axis_and_group_id_ignores_batch_and_seed(tmp_path):
    cfg = base_config(tmp_path)
    cfg.update(seq_lens=[16, 32], batch_sizes=[1, 2], seeds=[0, 1])
    _, cells = cells_of(cfg)
    assert len({c.cell_id for c in cells}) == 8
    groups = {(c.seq_len): c.group_id for c in cells}
    assert all(c.group_id == groups[c.seq_len] for c in cells)
    assert len(set(groups.values())) == 2


def test_run_id_is_order_independent(tmp_path):
    cfg = base_config(tmp_path)
    cfg.update(seq_lens=[16, 32])
    exp, cells = cells_of(cfg)
    cfg.update(seq_lens=[32, 16])
    exp2, cells2 = cells_of(cfg)
    assert run_id_for(exp, cells) == run_id_for(exp2, cells2)
    assert run_id_for(exp, cells).startswith("t-")


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def test_overrides_are_typed_and_address_entries_by_name_or_index(tmp_path):
    cfg = base_config(tmp_path)
    raw, problems = apply_overrides(
        cfg,
        [
            "timing.repeats=7",
            "samplers.fake.params.num_steps=[1, 3]",
            "samplers.0.params.top_p=0.5",
            "seq_lens=[8]",
            "checkpoints.tiny.vocab_size=40",
        ],
    )
    assert problems == []
    _, cells = cells_of(raw)
    assert {c.timing.repeats for c in cells} == {7}
    assert sorted(c.config.num_steps for c in cells) == [1, 3]
    assert {c.config.top_p for c in cells} == {0.5}
    assert {c.seq_len for c in cells} == {8}
    assert {c.model_cfg.vocab_size for c in cells} == {40}
    assert cfg["timing"]["repeats"] == 2  # the input is not modified


def test_override_problems_are_reported_not_applied(tmp_path):
    raw, problems = apply_overrides(
        base_config(tmp_path),
        ["timing.repeats=abc", "timing.repat=3", "seeds", "samplers.nope.x=1"],
    )
    assert raw["timing"]["repeats"] == 2
    assert len(problems) == 4
    assert "'timing.repeats' is 'abc'" in problems[0]
    assert "Did you mean: repeats" in problems[1]
    assert "key=value" in problems[2]
    assert "no entry 'nope'" in problems[3]


# --------------------------------------------------------------------------------------------
# Malformed configs: validate and run both exit 2, write nothing
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mdlm_ckpt(tmp_path):
    return str(save_checkpoint(tiny_model("mdlm"), tmp_path / "ckpt_mdlm"))


def _set(cfg, path, value):
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


DELETE = object()
CKPT = "<ckpt>"

# (id, edits [(path, value)], overrides, expected message fragments)
MALFORMED = [
    (
        "unknown_top_key",
        [("seq_len", [16])],
        [],
        ["unknown key 'seq_len'", "Did you mean: seq_lens"],
    ),
    ("wrong_type_list", [("batch_sizes", "four")], [], ["'batch_sizes' is 'four'"]),
    ("wrong_type_nested", [("timing.repeats", "5x")], [], ["'timing.repeats' is '5x'"]),
    ("wrong_type_item", [("seq_lens", [16, "x"])], [], ["'seq_lens[1]' is 'x'"]),
    ("empty_seq_lens", [("seq_lens", [])], [], ["'seq_lens' is empty"]),
    ("empty_samplers", [("samplers", [])], [], ["'samplers' is empty"]),
    ("empty_param_grid", [("samplers.0.params", {"num_steps": []})], [], ["empty grid"]),
    ("negative_repeats", [("timing.repeats", -1)], [], ["timing: 'repeats' is -1"]),
    ("negative_warmup", [("timing.warmup", -2)], [], ["timing: 'warmup' is -2"]),
    ("zero_min_time", [("timing.min_time_s", 0)], [], ["timing: 'min_time_s' is 0"]),
    ("bad_timing_mode", [("timing.mode", "fast")], [], ["'timing.mode' is 'fast'", "'full'"]),
    ("bad_dtype", [("dtype", "float16")], [], ["'dtype' is 'float16'", "'bfloat16'"]),
    ("bad_device", [("device", "gpu")], [], ["'device' is 'gpu'"]),
    ("missing_name", [("name", DELETE)], [], ["missing required key 'name'"]),
    ("bad_name", [("name", "a b/c")], [], ["'name' is 'a b/c'"]),
    ("duplicate_seq_lens", [("seq_lens", [16, 16])], [], ["'seq_lens' repeats [16]"]),
    ("zero_batch", [("batch_sizes", [0])], [], ["'batch_sizes' contains 0"]),
    (
        "missing_ckpt_path",
        [("checkpoints.tiny", {"path": "/no/such/ckpt"})],
        [],
        ["'/no/such/ckpt' does not exist"],
    ),
    (
        "random_without_vocab",
        [("checkpoints.tiny", {"path": "random:tiny"})],
        [],
        ["'vocab_size' is None"],
    ),
    (
        "random_unknown_size",
        [("checkpoints.tiny.path", "random:tinyy")],
        [],
        ["Unknown model size 'tinyy'", "Did you mean: tiny"],
    ),
    (
        "random_bad_model_field",
        [("checkpoints.tiny.model", {"hiden_size": 8})],
        [],
        ["unknown model field 'hiden_size'", "Did you mean: hidden_size"],
    ),
    (
        "unknown_sampler",
        [("samplers.0.sampler", "fak")],
        [],
        ["Unknown sampler 'fak'", "Did you mean: fake"],
    ),
    (
        "unknown_ckpt_ref",
        [("samplers.0.checkpoint", "tiyn")],
        [],
        ["checkpoint 'tiyn' is not defined", "Did you mean: tiny"],
    ),
    (
        "family_mismatch",
        [("checkpoints.tiny", {"path": CKPT}), ("samplers.0.sampler", "fake_ar")],
        [],
        ["sampler 'fake_ar' needs a model of family ar", "is family 'mdlm'"],
    ),
    (
        "block_not_dividing_L",
        [("samplers.0.params.block_size", 5)],
        [],
        ["seq_len 16 is not divisible by block_size 5"],
    ),
    (
        "unknown_sampler_param",
        [("samplers.0.params", {"num_step": 4})],
        [],
        ["unknown key 'samplers.fake.params.num_step'", "Did you mean: num_steps"],
    ),
    (
        "sampler_param_wrong_type",
        [("samplers.0.params", {"num_steps": "many"})],
        [],
        ["'samplers.fake.params.num_steps' is 'many'"],
    ),
    ("sampler_problems", [("samplers.0.params", {"num_steps": 0})], [], ["'num_steps' is 0"]),
    ("top_p_out_of_range", [("samplers.0.params", {"top_p": 1.5})], [], ["'top_p' is 1.5"]),
    (
        "zip_unequal",
        [("samplers.0.zip", [{"num_steps": [1, 2], "top_p": [0.9]}])],
        [],
        ["different lengths"],
    ),
    (
        "zip_overlaps_params",
        [("samplers.0.zip", [{"num_steps": [1, 2]}])],
        [],
        ["'num_steps' also appears"],
    ),
    ("profile_in_params", [("samplers.0.params", {"profile": True})], [], ["timing.mode: profile"]),
    (
        "duplicate_labels",
        [("samplers", [{"sampler": "fake"}, {"sampler": "fake", "params": {"num_steps": 3}}])],
        [],
        ["sampler name 'fake' is used 2 times"],
    ),
    (
        "identical_cells",
        [("samplers", [{"sampler": "fake"}, {"name": "b", "sampler": "fake"}])],
        [],
        ["identical cells"],
    ),
    (
        "bad_override_type",
        [],
        ["timing.repeats=abc"],
        ["override 'timing.repeats=abc'", "'timing.repeats' is 'abc'"],
    ),
    (
        "bad_override_key",
        [],
        ["timing.repat=3"],
        ["override 'timing.repat=3'", "Did you mean: repeats"],
    ),
    ("bad_override_form", [], ["timing.repeats"], ["not of the form key=value"]),
    (
        "many_at_once",
        [("seq_len", [16]), ("samplers.0.sampler", "fak"), ("timing.repeats", -1)],
        [],
        ["unknown key 'seq_len'", "Unknown sampler 'fak'", "timing: 'repeats' is -1"],
    ),
]


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_is_rejected_before_anything_runs(
    tmp_path, mdlm_ckpt, capsys, case, command
):
    _, edits, overrides, fragments = case
    out = tmp_path / "results"
    cfg = base_config(out)
    for path, value in edits:
        _set(
            cfg,
            path,
            json.loads(json.dumps(value).replace(CKPT, mdlm_ckpt))
            if value is not DELETE
            else value,
        )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = cli.main(
        [command, str(path), *overrides] + (["--no-progress"] if command == "run" else [])
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert "Nothing was run or written" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "text, fragment",
    [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "must hold a mapping")],
)
def test_unreadable_yaml_is_rejected(tmp_path, capsys, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["validate", str(path)]) == 2
    assert fragment in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_every_problem_is_reported_once(tmp_path):
    cfg = base_config(tmp_path)
    cfg["samplers"] = [
        {"sampler": "fak"},
        {"name": "x", "sampler": "fake", "params": {"num_steps": 0}},
    ]
    cfg["timing"]["repeats"] = 0
    cfg["seq_len"] = [3]
    _, _, problems = validate(cfg)
    assert len(problems) == len(set(problems)) == 4, problems


def test_valid_config_validates_and_prints_the_run_folder(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path / "results")))
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    exp, cells = load_experiment(path)
    assert f"OK: {len(cells)} cells" in out and run_id_for(exp, cells) in out
    assert not (tmp_path / "results").exists()


CONFIGS = sorted(Path(__file__).resolve().parents[3].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate_and_start_with_a_command_comment(path, tmp_path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert text.startswith("# Command:")
    assert "dlmbench run configs/" in first or "python scripts/" in first
    doc = yaml.safe_load(text)
    names = {s["sampler"] for s in doc["samplers"]}
    missing = sorted(n for n in names if n not in SAMPLERS)
    if missing:
        pytest.skip(f"samplers not registered in this checkout: {missing}")
    tiny_hf = [c for c in doc["checkpoints"].values() if str(c).count("hf:.cache/hf-tiny/")]
    if tiny_hf:  # smoke_hf: the models its header's command writes, written here
        pytest.importorskip("transformers")
        from harness.model.hf import tiny

        tiny.write_all(tmp_path / "hf-tiny")
        for spec in tiny_hf:
            spec["path"] = spec["path"].replace(".cache/hf-tiny", str(tmp_path / "hf-tiny"))
    exp, cells, problems = validate(doc)
    assert problems == [] and cells


def test_expand_cells_reports_unknown_sampler_with_available_names(tmp_path):
    cfg = base_config(tmp_path)
    cfg["samplers"][0]["sampler"] = "fakee"
    exp, _, problems = validate(cfg)
    assert exp is None
    assert any("Did you mean: fake" in p and "Available:" in p for p in problems)
    _, cells = cells_of(base_config(tmp_path))
    assert expand_cells(cells_of(base_config(tmp_path))[0])[0][0].cell_id == cells[0].cell_id
