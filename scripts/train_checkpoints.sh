#!/usr/bin/env bash
# Train the shipped small checkpoints one after another (they share 2 CPU cores; never in parallel).
#
#   nohup scripts/train_checkpoints.sh [RUN_DIR] > train_checkpoints.log 2>&1 &
#
# Trains from a frozen copy of the committed HEAD (git archive) in RUN_DIR (default
# /tmp/dlmbench-train), so edits to the working tree cannot change a run half-way; each finished
# checkpoint directory is copied back into this repository's checkpoints/. Order: mdlm (writes
# the EMA snapshot BD3-LM starts from), bd3lm-b4, esolm, ar, evaluator-ar, bd3lm-b16.
# Per-run logs: RUN_DIR/logs/<name>.log.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUN_DIR="${1:-/tmp/dlmbench-train}"
PY="${PYTHON:-/work/main/.venv/bin/python}"
RUNS="${RUNS:-mdlm bd3lm-b4 esolm ar evaluator-ar bd3lm-b16}"
export OMP_NUM_THREADS=2

mkdir -p "$RUN_DIR/src" "$RUN_DIR/logs"
git -C "$REPO" archive HEAD | tar -x -C "$RUN_DIR/src"
echo "commit $(git -C "$REPO" rev-parse HEAD) -> $RUN_DIR/src"
for name in $RUNS; do
  echo "$(date -Is) start $name"
  (cd "$RUN_DIR/src" && "$PY" -m harness.train "configs/train/$name.yaml") > "$RUN_DIR/logs/$name.log" 2>&1 \
    || { echo "$(date -Is) FAILED $name (see $RUN_DIR/logs/$name.log)"; continue; }
  rm -rf "$REPO/checkpoints/.$name.copy"
  cp -r "$RUN_DIR/src/checkpoints/$name" "$REPO/checkpoints/.$name.copy"
  rm -rf "$REPO/checkpoints/$name"
  mv "$REPO/checkpoints/.$name.copy" "$REPO/checkpoints/$name"
  echo "$(date -Is) done $name: $(tail -1 "$RUN_DIR/logs/$name.log")"
done
echo "$(date -Is) all done"
