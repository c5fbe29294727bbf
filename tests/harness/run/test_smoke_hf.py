"""``configs/smoke_hf.yaml``: every HF adapter kind and the diffusers schedulers, end to end.

The config is run as shipped (only the model folder, the output folder and the repeats are
changed) on the tiny random models that ``python -m harness.model.hf.tiny`` writes, and its rows
must land in the same results table, ``show`` and plots as the DiT runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness import cli, results
from harness.run.experiment import load_experiment, run_id_for

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

from harness.model.hf import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "smoke_hf.yaml"


def shipped_config_at(tmp_path: Path) -> Path:
    """The shipped config with its models under ``tmp_path`` and one timed repeat."""
    models = tmp_path / "hf-tiny"
    tiny.write_all(models)
    doc = yaml.safe_load(CONFIG.read_text())
    for spec in doc["checkpoints"].values():
        assert spec["path"].startswith("hf:.cache/hf-tiny/")  # what the header's command writes
        spec["path"] = spec["path"].replace(".cache/hf-tiny", str(models))
    doc["output_dir"] = str(tmp_path / "results")
    doc["timing"] = {"mode": "full", "repeats": 1, "warmup": 0}
    path = tmp_path / "smoke_hf.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_header_names_the_command_that_writes_the_models():
    head = CONFIG.read_text().splitlines()[0]
    assert "python -m harness.model.hf.tiny .cache/hf-tiny" in head
    assert "dlmbench run configs/smoke_hf.yaml" in head


def test_smoke_hf_runs_every_cell_into_the_common_table_and_plots(tmp_path, capsys):
    path = shipped_config_at(tmp_path)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    exp, cells = load_experiment(path)
    run_dir = Path(exp.output_dir) / run_id_for(exp, cells)
    df = results.load_results(run_dir)
    assert len(df) == len(cells) and set(df["status"]) == {"ok"}
    kinds = set(zip(df["sampler"], df["family"], strict=True))
    assert ("diffusers_blocks", "mdlm") in kinds and ("diffusers_blocks", "uniform_block") in kinds
    assert ("diffusers_pipeline", "mdlm") in kinds and (
        "diffusers_pipeline",
        "uniform_block",
    ) in kinds
    assert {"mdlm", "mdlm_blocks"} <= set(df["sampler"])
    assert (df["nfe_denoise"] >= 1).all() and (df["tokens_per_s"] > 0).all()
    assert cli.main(["show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "diffusers-gemma" in shown
    assert "block_length=8" in shown and '{"' not in shown  # mappings as k=v, not JSON
    assert max(len(line) for line in shown.splitlines()) < 400
    out = tmp_path / "plots"
    assert (
        cli.main(
            ["plot", str(run_dir), "--kind", "frontier", "--y", "nfe_denoise", "--out", str(out)]
        )
        == 0
    )
    assert any(out.iterdir())


def test_show_prints_mapping_parameters_compactly_and_caps_them():
    assert cli._param_text('{"a": 1, "b": "x"}') == "a=1 b=x"
    assert cli._param_text({"k": 2}) == "k=2"
    long = cli._param_text({f"key{i}": i for i in range(20)})
    assert len(long) == cli.SHOW_PARAM_CHARS and long.endswith("…")
    assert cli._param_text(float("nan")) == "-" and cli._param_text("{not json") == "{not json"


def test_the_tiny_writer_never_writes_into_a_users_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert tiny.main([str(mine)]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
