# dlmbench: the README's two commands are `make demo` and `make test`.
# CPU install path: torch==2.13.0 (a CPU wheel). GPU users: `make setup TORCH_SPEC=` to keep the
# torch already in the environment (create the venv with VENV_FLAGS=--system-site-packages).
PY ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test bench lint smoke-hf clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/dlmbench demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pytest -m benchmark --benchmark-enable -p no:randomly tests/bench

smoke-hf: setup
	$(BIN)/python -m harness.model.hf.tiny .cache/hf-tiny
	$(BIN)/dlmbench run configs/smoke_hf.yaml

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
