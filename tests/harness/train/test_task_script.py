"""scripts/train_task_checkpoints.sh: which code the frozen copy holds, and the copy-back.

Runs the script inside a throw-away git repository with a stand-in PYTHON that only writes a
checkpoint folder, so nothing is trained.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FAKE_PY = """#!/usr/bin/env bash
# called as: PY -m harness.train configs/train/NAME.yaml
name=$(basename "$3" .yaml)
mkdir -p "checkpoints/$name"
cp a.txt "checkpoints/$name/seen_a.txt"
echo "trained $name"
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    r = tmp_path / "repo"
    (r / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "train_task_checkpoints.sh", r / "scripts")
    (r / "a.txt").write_text("committed\n")
    (r / "gone.txt").write_text("tracked, deleted later\n")
    (r / ".gitignore").write_text("ignored.txt\n")
    git(r, "init", "-q")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "init")
    (r / "a.txt").write_text("edited, not committed\n")
    (r / "new.txt").write_text("untracked\n")
    (r / "ignored.txt").write_text("ignored\n")
    (r / "gone.txt").unlink()
    py = tmp_path / "fakepy"
    py.write_text(FAKE_PY)
    py.chmod(0o755)
    return r


def run(repo: Path, run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": str(repo.parent / "fakepy"), "RUNS": "tasks-x"}
    return subprocess.run(
        ["bash", "scripts/train_task_checkpoints.sh", *flags, str(run_dir)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_default_trains_the_committed_code_and_copies_the_checkpoint_back(repo, tmp_path):
    p = run(repo, tmp_path / "run")
    assert p.returncode == 0, p.stderr
    src = tmp_path / "run" / "src"
    assert (src / "a.txt").read_text() == "committed\n" and (src / "gone.txt").exists()
    assert not (src / "new.txt").exists() and not (src / "ignored.txt").exists()
    assert (repo / "checkpoints" / "tasks-x" / "seen_a.txt").read_text() == "committed\n"
    assert "done tasks-x: trained tasks-x" in p.stdout
    assert "mode archive" in (tmp_path / "run" / "source.txt").read_text()


def test_worktree_mode_trains_the_uncommitted_code_and_records_the_diff(repo, tmp_path):
    p = run(repo, tmp_path / "run", "--worktree")
    assert p.returncode == 0, p.stderr
    src = tmp_path / "run" / "src"
    assert (src / "a.txt").read_text() == "edited, not committed\n"
    assert (src / "new.txt").exists()
    assert not (src / "ignored.txt").exists() and not (src / "gone.txt").exists()
    assert (repo / "checkpoints" / "tasks-x" / "seen_a.txt").read_text().startswith("edited")
    assert "+edited, not committed" in (tmp_path / "run" / "source.diff").read_text()
    assert "?? new.txt" in (tmp_path / "run" / "source.txt").read_text()
    again = run(repo, tmp_path / "run", "--worktree")  # never trains over an earlier copy
    assert again.returncode == 2 and "already exists" in again.stderr
