#!/usr/bin/env bash
# Train the four task checkpoints (issue 13) one after another (they share 2 CPU cores; never in
# parallel), each fine-tuned from the shipped checkpoint of its family (docs/training-tasks.md).
#
#   nohup scripts/train_task_checkpoints.sh [--worktree] [RUN_DIR] > train_task_checkpoints.log 2>&1 &
#
# Trains from a frozen copy of the code in RUN_DIR/src (default RUN_DIR /tmp/dlmbench-train-tasks),
# so edits to the working tree cannot change a run half-way:
#   default      the committed HEAD (git archive);
#   --worktree   the working tree as it is now: tracked files plus untracked files git does not
#                ignore (for code that is not committed yet); RUN_DIR/source.diff records
#                `git diff HEAD` and RUN_DIR/source.txt the HEAD commit and `git status --short`.
# Each finished checkpoint directory (config.json with the command and resolved config,
# model.safetensors, train_log.csv) is copied back into this repository's checkpoints/.
# Order: tasks-ar, tasks-mdlm, tasks-esolm, tasks-bd3lm-b4 (RUNS="..." picks others).
# Per-run logs: RUN_DIR/logs/<name>.log. Tokenised corpus streams are shared with this
# repository's .cache (keyed by file hashes).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODE=archive
if [ "${1:-}" = "--worktree" ]; then MODE=worktree; shift; fi
RUN_DIR="${1:-/tmp/dlmbench-train-tasks}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
RUNS="${RUNS-tasks-ar tasks-mdlm tasks-esolm tasks-bd3lm-b4}"
export OMP_NUM_THREADS=2
export DLMBENCH_CACHE="${DLMBENCH_CACHE:-$REPO/.cache}"

if [ -e "$RUN_DIR/src" ]; then
  echo "error: $RUN_DIR/src already exists; pass another RUN_DIR or remove it." >&2
  exit 2
fi
mkdir -p "$RUN_DIR/src" "$RUN_DIR/logs"
if [ "$MODE" = archive ]; then
  git -C "$REPO" archive HEAD | tar -x -C "$RUN_DIR/src"
else
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf -) | tar -xf - -C "$RUN_DIR/src"
  git -C "$REPO" diff HEAD > "$RUN_DIR/source.diff"
fi
{ echo "mode $MODE"; echo "commit $(git -C "$REPO" rev-parse HEAD)"; git -C "$REPO" status --short; } \
  > "$RUN_DIR/source.txt"
echo "$MODE of commit $(git -C "$REPO" rev-parse HEAD) -> $RUN_DIR/src"
for name in $RUNS; do
  echo "$(date -Is) start $name"
  (cd "$RUN_DIR/src" && "$PY" -m harness.train "configs/train/$name.yaml") > "$RUN_DIR/logs/$name.log" 2>&1 \
    || { echo "$(date -Is) FAILED $name (see $RUN_DIR/logs/$name.log)"; continue; }
  mkdir -p "$REPO/checkpoints"
  rm -rf "$REPO/checkpoints/.$name.copy"
  cp -r "$RUN_DIR/src/checkpoints/$name" "$REPO/checkpoints/.$name.copy"
  rm -rf "$REPO/checkpoints/$name"
  mv "$REPO/checkpoints/.$name.copy" "$REPO/checkpoints/$name"
  echo "$(date -Is) done $name: $(tail -1 "$RUN_DIR/logs/$name.log")"
done
echo "$(date -Is) all done"
