"""Every command of ``dlmbench --help`` under bad input: one clear line, exit 2, nothing touched.

Finding (issue 11 §3): user mistakes — a missing or corrupt checkpoint / evaluator / run /
config, a non-UTF-8 file, a read-only or non-directory output folder, train configs and overrides
of the wrong type, missing corpus or tokenizer — ended in Python tracebacks. Each case below runs
the real CLI entry point and asserts: exit code 2, an ``error:`` (or argparse ``usage``) message,
no traceback, and no file created or removed outside the case's own scratch folder (the shipped
checkpoints, configs and tokenizer are fingerprinted before and after).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import cli
from tests.harness.run.test_runner import write_config as runner_config

ROOT = Path(__file__).resolve().parents[2]
GUARDED = ("checkpoints", "configs", "data", "baselines")


def fingerprint() -> dict[str, str]:
    """Path → size and mtime of every file under the guarded shipped folders."""
    out = {}
    for top in GUARDED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(ROOT))] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def tiny_config(tmp: Path, **changes) -> Path:
    """One real ``mdlm`` cell on a tiny random model (the runner tests' config, one cell)."""
    one_cell = {
        "name": "hostile",
        "checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33}},
        "samplers": [{"sampler": "mdlm", "params": {"num_steps": 2}}],
        "batch_sizes": [1],
        "timing": {"repeats": 1, "warmup": 1},
    }
    return runner_config(tmp, **{**one_cell, **changes})


def scratch_files(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def cases(tmp: Path) -> dict[str, list[str]]:
    """Case name → argv; every file a case needs is made under ``tmp``."""
    (tmp / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1") + b"\xff\xfe\n")
    (tmp / "bad.yaml").write_text("name: [unclosed\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "corrupt.ckpt").write_bytes(b"\x00garbage" * 10)
    (tmp / "emptydir").mkdir()
    (tmp / "fake_run").mkdir()
    good = str(tiny_config(tmp))
    train_bad = tmp / "train_bad.yaml"
    train_bad.write_text(yaml.safe_dump({"family": "mdlm", "steps": "many", "lr": [1, 2]}))
    missing = str(tmp / "missing")
    train_base = {
        "name": "hostile", "family": "mdlm", "model_size": "tiny", "seq_len": 16,
        "batch_size": 2, "steps": 1, "warmup_steps": 0, "out_dir": str(tmp / "ckpts"),
    }  # fmt: skip
    train_refs = {}
    for field in ("corpus", "tokenizer", "init_from"):
        path = tmp / f"train_no_{field}.yaml"
        path.write_text(yaml.safe_dump({**train_base, field: missing}))
        train_refs[f"train-missing-{field.replace('_', '')}"] = ["train", str(path)]
    return {
        **train_refs,
        "run-missing-config": ["run", missing + ".yaml"],
        "run-config-is-folder": ["run", str(tmp / "emptydir")],
        "run-non-utf8": ["run", str(tmp / "latin1.yaml")],
        "run-bad-yaml": ["run", str(tmp / "bad.yaml")],
        "run-not-a-mapping": ["run", str(tmp / "list.yaml")],
        "run-bad-override": ["run", good, "timing.repeats=abc"],
        "run-unknown-override": ["run", good, "timing.repeatz=3"],
        "run-output-is-a-file": ["run", good, f"output_dir={tmp / 'a_file'}"],
        "run-dry-unknown-hardware": ["run", good, "--dry-run", "--hardware", "h9000"],
        "validate-missing": ["validate", missing + ".yaml"],
        "validate-non-utf8": ["validate", str(tmp / "latin1.yaml")],
        "ls-unknown-topic": ["ls", "samplerz"],
        "show-missing-run": ["show", "no-such-run", "--output-dir", str(tmp / "results")],
        "show-empty-folder": ["show", str(tmp / "fake_run")],
        "status-missing-run": ["status", "no-such-run", "--output-dir", str(tmp / "results")],
        "status-not-a-run": ["status", str(tmp / "fake_run")],
        "demo-bad-override": ["demo", "timing.repeats=-3"],
        "train-missing-config": ["train", missing + ".yaml"],
        "train-wrong-types": ["train", str(train_bad)],
        "train-override-wrong-type": ["train", str(train_bad), "steps=abc", "lr=[1]"],
        "train-non-utf8": ["train", str(tmp / "latin1.yaml")],
        "check-machine-bad-seconds": ["check-machine", "--seconds", "-1"],
        "check-machine-huge-seconds": ["check-machine", "--seconds", "1e9"],
        "convert-missing": ["convert-ckpt", missing + ".ckpt", str(tmp / "out")],
        "convert-corrupt": ["convert-ckpt", str(tmp / "corrupt.ckpt"), str(tmp / "out2")],
        "quality-missing-run": ["quality", "no-such-run", "--evaluator", "dit:" + missing],
        "quality-missing-evaluator": ["quality", str(tmp / "fake_run"), "--evaluator", missing],
        "plot-missing-run": ["plot", missing],
        "report-claims-missing": ["report", "claims", missing],
        "report-matched-missing": ["report", "matched", missing],
        "report-unknown-kind": ["report", "clams", missing],
    }


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return sorted(cases(Path(d)))


@pytest.fixture(scope="module")
def shipped():
    return fingerprint()


@pytest.mark.parametrize("name", _case_names())
def test_bad_input_is_one_clear_line(name, tmp_path, monkeypatch, capsys, shipped):
    """Finding: user mistakes in every command ended in tracebacks (see the module docstring)."""
    argv = cases(tmp_path)[name]
    monkeypatch.chdir(tmp_path)
    before = scratch_files(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, f"{name}: exit {code}; stderr:\n{err}"
    assert "Traceback" not in err
    assert err.strip(), f"{name}: no message on stderr"
    assert "error" in err.lower() or "usage" in err.lower()
    assert len(err) < 4000, f"{name}: the message is {len(err)} characters"
    assert scratch_files(tmp_path) == before, f"{name}: files changed in the scratch folder"
    assert fingerprint() == shipped, f"{name}: a shipped file changed"


def test_every_command_has_a_bad_input_case():
    """A command added to ``dlmbench --help`` without a hostile case fails here."""
    import argparse

    parser = cli.build_parser(None)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    long_names = {"convert": "convert-ckpt", "check": "check-machine"}
    covered = {long_names.get(n.split("-")[0], n.split("-")[0]) for n in _case_names()}
    assert set(sub.choices) <= covered


def test_show_into_a_closed_pipe_is_quiet(tmp_path):
    """Finding: ``dlmbench show RUN | head`` printed a BrokenPipeError traceback."""
    path = tiny_config(tmp_path)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys\n"
        "from harness.cli import main\n"
        f"sys.exit(main(['show', 'hostile', '--output-dir', {str(tmp_path / 'results')!r}]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 0


def test_status_from_another_directory(tmp_path, monkeypatch, capsys):
    """Finding: ``status`` run from another directory than the run's failed with a traceback."""
    path = tiny_config(tmp_path)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    run_dir = next((tmp_path / "results").iterdir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "done 1" in out.out and "Traceback" not in out.err


def test_user_error_classes_share_one_base():
    """Every user-mistake exception derives from UserError, which the CLI prints as one line."""
    from baselines import BaselineDataError
    from dlmcore.configio import ConfigError
    from dlmcore.errors import UserError
    from dlmcore.registry import RegistryError
    from harness.model.checkpoints import CheckpointError
    from harness.quality.evaluators import EvaluatorError
    from harness.report.frontier import FrontierError
    from samplers.base import SamplerError

    for cls in (
        BaselineDataError, ConfigError, RegistryError, CheckpointError, EvaluatorError,
        FrontierError, SamplerError,
    ):  # fmt: skip
        assert issubclass(cls, UserError), cls


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user mistakes are turned into one line; a bug in dlmbench still raises."""

    monkeypatch.setitem(cli.LS_TOPICS, "samplers", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError), contextlib.redirect_stdout(None):
        cli.main(["ls", "samplers"])


def test_short_repr_bounds_hostile_values():
    """Finding: error messages repr'd raw values in full (a 9-level alias bomb hung them)."""
    from dlmcore.errors import short_repr

    assert short_repr("x" * 10**6).endswith("(1000002 chars)")
    assert len(short_repr("x" * 10**6)) < 120
    assert short_repr(list(range(10**6))) == "<list of 1000000 items>"
    assert short_repr(3) == "3"


def test_slurm_without_srun_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Finding: ``run --executor slurm`` on a host without ``srun`` ended in submitit's traceback
    after creating the run folder."""
    path = tiny_config(tmp_path)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    code = cli.main(["run", str(path), "--executor", "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "srun" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()
