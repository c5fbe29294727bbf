"""The results store: atomic writes, temp-file hygiene, round trips and run lookup."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from harness import results


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "cells" / "abc.parquet"

    def half_write(p):
        p.write_bytes(b"PAR1 half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        results.atomic_write(target, half_write)
    assert list((tmp_path / "cells").iterdir()) == []


def test_a_killed_write_leaves_only_a_temp_file_that_is_ignored_then_removed(tmp_path):
    run = tmp_path / "run"
    results.init_run_dir(run, {"name": "x"}, {"torch": "1"}, "e1")
    results.write_shard(run, {"cell_id": "a", "status": "ok", "wall_s": 1.0})
    # A SIGKILL between write and rename leaves a temp sibling with partial bytes.
    (run / "cells" / f"{results.TEMP_PREFIX}b.parquet.xyz").write_bytes(b"PAR1 partial")
    assert [p.name for p in results.shard_paths(run)] == ["a.parquet"]
    assert list(results.load_results(run)["cell_id"]) == ["a"]
    results.init_run_dir(run, {"name": "x"}, {"torch": "1"}, "e1")
    assert sorted(p.name for p in (run / "cells").iterdir()) == ["a.parquet"]


def test_shard_round_trip_keeps_lists_nulls_and_scalars(tmp_path):
    row = {
        "cell_id": "c1",
        "status": "ok",
        "error": None,
        "wall_s": 0.5,
        "wall_s_all": [0.4, 0.5, 0.6],
        "warmup_ok": True,
        "p_num_steps": 8,
        "p_tags": [1, 2],
        "p_block_size": None,
        "info": {"a": 1},
    }
    path = results.write_shard(tmp_path, row)
    back = results.read_shard(path)
    assert back["wall_s_all"] == [0.4, 0.5, 0.6]
    assert back["error"] is None and back["p_block_size"] is None
    assert back["warmup_ok"] is True and back["p_num_steps"] == 8
    assert json.loads(back["info"]) == {"a": 1}
    assert pq.read_table(path).num_rows == 1


def test_load_results_adds_every_design_column_and_sorts_by_cell_index(tmp_path):
    for i, cid in [(2, "z"), (0, "y"), (1, "x")]:
        results.write_shard(tmp_path, {"cell_id": cid, "cell_index": i, "status": "ok"})
    df = results.load_results(tmp_path)
    assert list(df["cell_id"]) == ["y", "x", "z"]
    assert set(results.DESIGN_COLUMNS) <= set(df.columns)
    assert math.isnan(df["energy_j"][0])


def test_load_results_on_a_non_run_folder_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        results.load_results(tmp_path)


def test_env_of_a_later_differing_session_is_kept_beside_the_first(tmp_path):
    results.init_run_dir(tmp_path, {}, {"torch": "1"}, "e1")
    results.init_run_dir(tmp_path, {}, {"torch": "2"}, "e2")
    results.init_run_dir(tmp_path, {}, {"torch": "1"}, "e1")
    assert json.loads((tmp_path / "env.json").read_text())["torch"] == "1"
    assert json.loads((tmp_path / "env-e2.json").read_text())["torch"] == "2"
    assert sorted(p.name for p in tmp_path.glob("env*.json")) == ["env-e2.json", "env.json"]


def test_resolve_run_by_path_id_or_name(tmp_path):
    for rid in ("smoke-aaaa", "smoke-bbbb", "other-cccc"):
        (tmp_path / rid / "cells").mkdir(parents=True)
    assert results.resolve_run(str(tmp_path / "other-cccc")) == tmp_path / "other-cccc"
    assert results.resolve_run("smoke-aaaa", tmp_path) == tmp_path / "smoke-aaaa"
    assert results.resolve_run("smoke", tmp_path).name.startswith("smoke-")
    with pytest.raises(FileNotFoundError, match="runs there: "):
        results.resolve_run("nope", tmp_path)
