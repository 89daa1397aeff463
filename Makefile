# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both install what is missing into .venv first (idempotent: a stamp file skips the work).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PKGS   := trainer scorer api vlaewatch

.PHONY: install demo test lint format clean

install: $(STAMP)

# torch first, pinned, so pip takes the local CPU/CUDA wheel instead of resolving a new one.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/vlaewatch train --dataset digits --normal 0 --epochs 10 --out .vlaewatch/demo-model
	$(BIN)/vlaewatch evaluate --checkpoint .vlaewatch/demo-model

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PKGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf .vlaewatch .pytest_cache .ruff_cache .mypy_cache
