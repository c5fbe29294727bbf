"""The runner end to end on a fake sampler driving a tiny real DiT.

Covers: one row per cell with every design column; samples equal to an independent
``sample(seed)``; failing cells recorded while the sweep goes on; the OOM backstop; resume; and
SIGKILL at random points followed by a resume that loses, duplicates and half-writes nothing.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from harness import cli, results
from harness.model.checkpoints import save_checkpoint
from harness.model.modelspec import load_model
from harness.run.experiment import load_experiment
from harness.run.sweep import run_experiment
from tests.conftest import tiny_model
from tests.harness.fake_sampler import FakeConfig, FakeSampler

pytestmark = pytest.mark.usefixtures("fake_samplers")


def write_config(tmp_path: Path, **changes) -> Path:
    cfg = {
        "name": "t",
        "checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33, "init_seed": 3}},
        "samplers": [{"sampler": "fake", "params": {"num_steps": [2, 4]}}],
        "seq_lens": [8],
        "batch_sizes": [1, 2],
        "seeds": [0],
        "timing": {"repeats": 3, "warmup": 1},
        "output_dir": str(tmp_path / "results"),
    }
    cfg.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_writes_a_row_per_cell_with_every_design_column(tmp_path, capsys):
    path = write_config(tmp_path)
    _, cells = load_experiment(path)
    run_dir = run_experiment(path, progress=False)
    df = results.load_results(run_dir)
    assert len(df) == len(cells) == 4
    assert set(results.DESIGN_COLUMNS) <= set(df.columns)
    assert list(df["cell_id"]) == [c.cell_id for c in cells]
    assert (df["status"] == "ok").all() and df["error"].isna().all()
    for _, r in df.iterrows():
        assert len(r["wall_s_all"]) == r["repeats"] == 3
        assert r["wall_s"] == pytest.approx(np.median(r["wall_s_all"]))
        assert r["wall_s_mean"] == pytest.approx(np.mean(r["wall_s_all"]))
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * 8 / r["wall_s"])
        assert r["s_per_sample"] == pytest.approx(r["wall_s"] / r["batch_size"])
        assert r["nfe_total"] == r["nfe_denoise"] == r["p_num_steps"]
        assert r["token_forwards"] == r["p_num_steps"] * 8
        assert r["ms_per_call"] == pytest.approx(r["wall_s"] * 1e3 / r["nfe_total"])
        assert r["tokens_per_forward"] == pytest.approx(8 / r["nfe_total"])
        assert r["energy_method"] in ("none", "nvml_counter", "power_integration")
        assert r["family"] == "mdlm" and r["model_size"] == "tiny" and r["timing_mode"] == "full"
    assert {"config.yaml", "env.json", "cells", "samples"} <= {p.name for p in run_dir.iterdir()}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_id"] == run_dir.name
    assert cli.main(["show", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "4 cells: ok 4" in out and "num_steps" in out and out.count("\n fake") == 4


def design_result_columns() -> list[str]:
    """The runner's columns as docs/design.md's Results section names them (quality excluded)."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "design.md").read_text()
    section = doc.split("## Results")[1].split("\n## ")[0]
    paras = [
        p
        for p in section.split("\n\n")
        if p.startswith(("Identity", "Timing", "Work", "Memory", "Contention"))
    ]
    values = {
        "ok",
        "error",
        "oom",
        "skipped",
        "full",
        "profile",
        "nvml_counter",
        "power_integration",
        "none",
        "noisy",
    }
    names = re.findall(r"`([a-z0-9_]+)`", " ".join(paras))
    return [n for n in names if n not in values]


def test_every_results_column_of_the_design_doc_is_written(tmp_path):
    names = design_result_columns()
    assert len(names) >= 50 and "wall_s_ci_hi" in names and "j_per_token" in names
    run_dir = run_experiment(write_config(tmp_path, batch_sizes=[1]), progress=False)
    df = results.load_results(run_dir)
    fake_fields = {f"p_{f.name}" for f in dataclasses.fields(FakeConfig)}
    expected = [n for n in names if not n.startswith("p_") or n in fake_fields]
    assert "p_num_steps" in expected and "p_block_size" in expected  # examples from the doc
    assert [n for n in expected if n not in df.columns] == []
    assert fake_fields <= set(df.columns)
    assert set(names) <= set(results.DESIGN_COLUMNS) | {
        "p_num_steps",
        "p_block_size",
        "p_alpha0_eval",
    }
    measured = [n for n in names if not n.startswith("p_") and n not in ("error", "device_ms")]
    nan_ok = {
        "nfe_profile_sim",
        "energy_j",
        "j_per_sample",
        "j_per_token",
        "peak_alloc_gb",
        "peak_reserved_gb",
        "nvml_used_gb",
        "cache_bytes_analytic",
        "context_rows",
        "cpu_mhz_min",
        "cpu_mhz_max",
        "cpu_governor",
        "gpu_sm_mhz",
        "gpu_other_processes",
        "gpu_throttle",
        "trust_reason",
    }  # CPU / placeholder / BD3-LM only / not exposed in a VM / None when trusted
    empty = [n for n in measured if n not in nan_ok and df[n].isna().any()]
    assert empty == []


def test_saved_samples_equal_an_independent_sample_with_the_cell_seed(tmp_path):
    """Re-seeding before each repeat makes every repeat replay ``sample(seed)`` exactly."""
    path = write_config(tmp_path, seeds=[0, 5], batch_sizes=[3])
    exp, cells = load_experiment(path)
    run_dir = run_experiment(path, progress=False)
    for cell in cells:
        model, _ = load_model("random:tiny", cell.model_cfg, 3, "cpu")
        g = torch.Generator().manual_seed(cell.seed)
        with torch.inference_mode():
            ref = FakeSampler(cell.config).sample(model, batch_size=3, seq_len=8, generator=g)
        assert torch.equal(results.load_samples(run_dir, cell.cell_id), ref.tokens)


def nan_checkpoint(tmp_path: Path) -> str:
    model = tiny_model("mdlm")
    with torch.no_grad():
        model.output_layer.linear.bias[3] = float("nan")
    return str(save_checkpoint(model, tmp_path / "nan_ckpt"))


def test_failing_cells_are_recorded_and_the_others_complete(tmp_path, capsys):
    path = write_config(
        tmp_path,
        checkpoints={
            "tiny": {"path": "random:tiny", "vocab_size": 33},
            "broken": {"path": nan_checkpoint(tmp_path)},
        },
        samplers=[
            {"sampler": "fake", "checkpoint": "tiny"},
            {
                "name": "raises",
                "sampler": "fake",
                "checkpoint": "tiny",
                "params": {"fail_at_step": 1},
            },
            {"name": "nan", "sampler": "fake", "checkpoint": "broken"},
        ],
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 1  # failed cells → exit code 1
    df = results.load_results(next((tmp_path / "results").iterdir()))
    by = {label: g for label, g in df.groupby("label")}
    assert (by["fake"]["status"] == "ok").all() and len(by["fake"]) == 2
    assert (by["raises"]["status"] == "error").all()
    assert by["raises"]["error"].str.startswith("SamplerError: fake failure at step 1").all()
    assert (by["nan"]["status"] == "error").all()
    assert by["nan"]["error"].str.startswith("NonFiniteLogitsError: network call 1").all()
    assert by["raises"]["wall_s"].isna().all()
    assert "[error] raises" in capsys.readouterr().err


def test_oom_at_batch_b_skips_larger_batches_and_resume_remembers_it(tmp_path):
    path = write_config(
        tmp_path,
        samplers=[{"sampler": "fake", "params": {"oom_above_batch": 2}}],
        batch_sizes=[1, 2, 4, 8],
        seq_lens=[8, 16],
    )
    run_dir = run_experiment(path, progress=False)
    df = results.load_results(run_dir)
    for L in (8, 16):
        got = df[df.seq_len == L].sort_values("batch_size")["status"].tolist()
        assert got == ["ok", "ok", "oom", "skipped"]
    oom = df[df.status == "oom"].iloc[0]
    assert oom["error"] == "OutOfMemoryError: fake OOM at batch 4"
    skipped = df[df.status == "skipped"].iloc[0]
    assert "batch 8 > batch 4" in skipped["error"]
    # Resume after losing the skipped rows: the OOM row is read back and they are skipped again.
    for cid in df[df.status == "skipped"]["cell_id"]:
        (run_dir / "cells" / f"{cid}.parquet").unlink()
    rows = []
    run_experiment(path, progress=False, on_row=rows.append)
    assert sorted(r["status"] for r in rows) == ["skipped", "skipped"]


def test_resume_runs_only_cells_without_a_shard(tmp_path):
    path = write_config(tmp_path)
    run_dir = run_experiment(path, progress=False)
    before = {p.name: p.read_bytes() for p in results.shard_paths(run_dir)}
    rows = []
    assert run_experiment(path, progress=False, on_row=rows.append) == run_dir
    assert rows == []
    victim = sorted(before)[1]
    (run_dir / "cells" / victim).unlink()
    run_experiment(path, progress=False, on_row=rows.append)
    assert [r["cell_id"] + ".parquet" for r in rows] == [victim]
    after = {p.name: p.read_bytes() for p in results.shard_paths(run_dir)}
    assert {k: v for k, v in after.items() if k != victim} == {
        k: v for k, v in before.items() if k != victim
    }


def test_retry_failed_reruns_only_failed_cells(tmp_path):
    path = write_config(
        tmp_path, samplers=[{"sampler": "fake", "params": {"fail_at_step": [-1, 0]}}]
    )
    run_dir = run_experiment(path, progress=False)
    rows = []
    run_experiment(path, progress=False, retry_failed=True, on_row=rows.append)
    assert len(rows) == 2 and all(r["p_fail_at_step"] == 0 for r in rows)
    assert len(results.load_results(run_dir)) == 4


def test_dry_run_predicts_every_cell_and_writes_nothing(tmp_path, capsys):
    path = write_config(tmp_path)
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cells; predicted timed work about" in out
    assert out.count("fake ") == 4 and "num_steps=2" in out and "num_steps=4" in out
    assert not (tmp_path / "results").exists()


def test_dry_run_on_named_hardware_needs_no_such_device_here(tmp_path, capsys, monkeypatch):
    """A CUDA config priced on the A6000 spec sheet from a CPU-only host: AR at L = 8 is 7
    KV-cached calls, each bounded by the 6.5 ms per-call overhead inferred for the paper."""
    from harness.measure.costmodel import Peaks
    from harness.report.claims import PAPER_CALL_OVERHEAD_S
    from harness.run import runner

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    path = write_config(
        tmp_path, samplers=[{"sampler": "ar"}], batch_sizes=[1], device="cuda", dtype="bfloat16"
    )
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--dry-run", "--hardware", "a6000"]) == 0
    out = capsys.readouterr().out
    assert "pricing on a6000" in out and "1 cells; predicted timed work about" in out
    exp, cells = load_experiment(path, device_here=False)
    (row,) = runner.estimate(exp, cells, Peaks.from_spec("a6000", PAPER_CALL_OVERHEAD_S["A6000"]))
    assert row["predicted_s"] == pytest.approx(7 * 13.3 / 2047)
    assert cli.main(["run", str(path), "--hardware", "a6000"]) == 2  # not without --dry-run
    assert "add --dry-run" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--dry-run", "--hardware", "h100"]) == 2
    err = capsys.readouterr().err
    assert "no spec sheet for 'h100'" in err and "'a6000'" in err and "'h200'" in err
    assert not (tmp_path / "results").exists()


def test_help_epilog_lists_three_quick_start_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    quick = [line.strip() for line in out.split("quick start")[1].splitlines()[1:] if line.strip()]
    assert len(quick) == 3 and all(q.startswith("dlmbench ") for q in quick)
    assert set(cli.LS_TOPICS) == {"samplers", "schedules", "checkpoints", "sizes", "tasks"}


@pytest.mark.parametrize("topic", ["samplers", "schedules", "checkpoints", "sizes"])
def test_ls_prints_entries_with_fields_and_defaults(capsys, topic):
    assert cli.main(["ls", topic]) == 0
    out = capsys.readouterr().out
    expect = {
        "samplers": ["fake  (families: mdlm)", "num_steps", "default 2"],
        "schedules": ["loglinear", "random"],
        "checkpoints": ["random:tiny", "vocab_size", "default None"],
        "sizes": ["tiny", "cpu-s", "M"],
    }[topic]
    assert all(e in out for e in expect), out


# --------------------------------------------------------------------------------------------
# SIGKILL at random points, then resume
# --------------------------------------------------------------------------------------------


def _child_run(cfg_path: str) -> None:
    torch.set_num_threads(1)  # no OpenMP team is created in the forked child
    os._exit(cli.main(["run", cfg_path, "--no-progress"]))


def _all_shards_readable(run_dir: Path) -> dict[str, bytes]:
    out = {}
    for p in results.shard_paths(run_dir):
        table = pq.read_table(p)  # raises on a truncated file
        assert table.num_rows == 1 and table.column("cell_id")[0].as_py() == p.stem
        out[p.name] = p.read_bytes()
    return out


def _shard_count(results_dir: Path) -> int:
    cells = next(results_dir.glob("*/cells"), None)
    return len(results.shard_paths(cells.parent)) if cells is not None else 0


def _kill_after(ctx, path: Path, delay: float, wait_progress: bool, cap: int = 3) -> None:
    """Start a run in a forked child and SIGKILL it ``delay`` s after start, or ``delay`` s
    after it finished one more cell when ``wait_progress``; at the latest once it has finished
    ``cap`` more cells (so that the sweep outlasts the kills on a fast machine too)."""
    out = path.parent / "results"
    before = _shard_count(out)
    proc = ctx.Process(target=_child_run, args=(str(path),))
    proc.start()
    start = time.monotonic()
    if wait_progress:
        while proc.is_alive() and _shard_count(out) <= before and time.monotonic() < start + 30:
            time.sleep(0.002)
        start = time.monotonic()
    while proc.is_alive() and time.monotonic() < start + delay and _shard_count(out) < before + cap:
        time.sleep(0.002)
    assert proc.is_alive(), "the sweep finished before the kill; enlarge the grid"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL


def test_sigkill_at_random_points_then_resume_loses_and_duplicates_nothing(tmp_path):
    """Ten SIGKILLs at seeded random points, then a clean run finishes the sweep.

    Half the kills come at a random delay after start (start-up, config and env writes, or a
    cell), half at a random delay after the child finished one more cell (mid-cell or mid-write);
    each child is killed at the latest after 3 new cells, so the kills land mid-sweep.
    After every kill every shard must be readable, and every shard seen before must be
    byte-identical (a finished cell is never rewritten or lost). The final run must produce
    exactly one row per cell.
    """
    path = write_config(
        tmp_path,
        samplers=[{"sampler": "fake", "params": {"num_steps": [1, 2, 3]}}],
        seq_lens=[8, 16],
        seeds=list(range(4)),
        timing={"repeats": 2, "warmup": 1},
    )
    _, cells = load_experiment(path)
    rng = random.Random(20240601)
    ctx = multiprocessing.get_context("fork")
    seen: dict[str, bytes] = {}
    run_dir = None
    gc.collect()
    gc.freeze()  # the children's start-up gc then skips the test process's heap
    try:
        for i in range(10):
            delay = rng.uniform(0.0, 0.4) if i % 2 == 0 else rng.uniform(0.0, 0.05)
            _kill_after(ctx, path, delay, wait_progress=i % 2 == 1)
            run_dir = run_dir or next((tmp_path / "results").glob("*"), None)
            now = _all_shards_readable(run_dir) if run_dir else {}
            assert {k: now[k] for k in seen} == seen  # nothing lost or rewritten
            seen = now
    finally:
        gc.unfreeze()
    assert 5 <= len(seen) < len(cells), "kills should land mid-sweep"
    run_dir = run_experiment(path, progress=False)
    final = _all_shards_readable(run_dir)
    assert {k: final[k] for k in seen} == seen
    df = results.load_results(run_dir)
    assert sorted(df["cell_id"]) == sorted(c.cell_id for c in cells)
    assert (df["status"] == "ok").all()
    assert not list(run_dir.rglob(results.TEMP_PREFIX + "*"))
    for c in cells:  # samples were written before their shard
        assert results.load_samples(run_dir, c.cell_id).shape == (c.batch_size, c.seq_len)


def test_fake_config_protocol_round_trip():
    cfg = FakeConfig(num_steps=3)
    assert FakeSampler(cfg).expected_calls(None, batch_size=1, seq_len=8) == [(8, 8, 8, 8)] * 3
