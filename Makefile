# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both install what is missing into .venv first (idempotent: a stamp file skips the work).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PKGS   := contract vlae trainer scorer api deploy vlaewatch bench

.PHONY: install demo test test-fast test-reliability lint format clean system-deps bench-quality bench-speed bench-speed-inspection \
	bench-soak bench-ab bench-inspection bench-fastpaths docs-shots \
	bench-scale-out bench-training-memory

install: $(STAMP)

# torch first, pinned, so pip takes the local CPU/CUDA wheel instead of resolving a new one.
# -qq: errors only, so the demo starts with its own output, not pip's notes on the index.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -qq -e '.[dev]'
	touch $(STAMP)

# Train, serve, calibrate, stream the held-out digits, print a summary; then keep serving the
# console (http://127.0.0.1:8080/) until Ctrl-C. DEMO_ARGS passes options, e.g. --exit-after.
demo: install
	$(BIN)/vlaewatch demo $(DEMO_ARGS)

# Debian packages the tests run for real: Chromium (the console's browser test, driven by
# Playwright; no browser download) and Prometheus (scrapes the API and Ray in the deploy tests).
SYSTEM_PKGS := chromium prometheus
system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get install -y -qq --no-install-recommends $$missing \
	  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing); fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PKGS)
	$(BIN)/lint-imports --no-logo

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Everything: lint, then every test, the reliability ones included; the 20 slowest are listed.
test: lint system-deps
	$(BIN)/python -m pytest -q --durations=20

# The developer's loop, in minutes: ruff, then the tests that need no Ray cluster, no service
# process, no browser and no longer fit (`-m "not slow"`, tests/conftest.py says which).
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not slow" --durations=20

# The console's screenshots in docs/ (the README's images), taken by its browser tests; other
# test runs write them to a temporary folder.
docs-shots: install system-deps
	VLAEWATCH_DOC_SHOTS=1 $(BIN)/python -m pytest -q tests/e2e/test_console.py \
	  tests/e2e/test_console_explore.py

# Exactly the tests docs/reliability.md's table cites (tests/reliability.py reads them).
test-reliability: install system-deps
	$(BIN)/python -m pytest -q $$($(BIN)/python -m tests.reliability)

# One-class MNIST benchmark (full MNIST in torchvision's layout under DATA_DIR, downloaded
# there when missing and a network exists); writes bench/results/quality.{json,md}.
DATA_DIR ?= $(VLAEWATCH_DATA_DIR)
QUALITY_ARGS ?=
bench-quality: install
	$(BIN)/python -m pip install --quiet pyod==3.6.7 tqdm==4.70.1
	$(BIN)/python -m bench.quality --data-dir "$(DATA_DIR)" $(QUALITY_ARGS)

# Local defects on generated textures and objects (trainer/inspection/): image and pixel
# AUROC per category and defect, beside the previous default and PyOD's VAE; then the real
# photographs under PHOTOS_DIR (bench/photos.py), reported apart; skipped when it is empty.
# Writes bench/results/inspection.{json,md}.
PHOTOS_DIR ?= $(or $(VLAEWATCH_PHOTOS_DIR),../shared/data/photos)
INSPECTION_ARGS ?=
bench-inspection: install
	$(BIN)/python -m pip install --quiet pyod==3.6.7 tqdm==4.70.1
	$(BIN)/python -m bench.inspection $(if $(PHOTOS_DIR),--photos "$(PHOTOS_DIR)") $(INSPECTION_ARGS)

# Raw model vs baselines vs the scorer over HTTP, frames, end to end, Ray Train vs the plain
# loop, memory over a soak, then the same at inspection sizes (128 x 128 colour, 256 x 256 grey);
# writes bench/results/speed.{json,md}.
bench-speed: install
	$(BIN)/python -m pip install --quiet pyod==3.6.7 tqdm==4.70.1 psutil==7.2.2
	$(BIN)/python -m bench.throughput $(SPEED_ARGS)

# Two Ray nodes on loopback (one CPU each): the scorer with 1 replica against 2, Ray Train with
# 1 worker against 2; writes bench/results/scale_out.{json,md} (bench-speed runs it too).
bench-scale-out: install
	$(BIN)/python -m pip install --quiet psutil==7.2.2
	$(BIN)/python -m bench.scale_out

# Training from a generated folder of N and then 10·N 64 x 64 colour images through Ray Data,
# beside the in-memory reader: peak RSS of the driver and of each worker, time per epoch;
# writes bench/results/training_memory.{json,md} (about 2.5 GB of temporary files).
bench-training-memory: install
	$(BIN)/python -m pip install --quiet psutil==7.2.2
	$(BIN)/python -m bench.training_memory $(TRAINING_MEMORY_ARGS)

# The default model for generated parts (trainer/inspection/) at inspection sizes: raw model,
# POST /v1/score, frames stream, end to end and bytes per retained frame, beside the digits
# default's raw model;
# writes bench/results/speed_inspection.{json,md}.
SPEED_INSPECTION_ARGS ?=
bench-speed-inspection: install
	$(BIN)/python -m bench.speed_inspection $(SPEED_INSPECTION_ARGS)

# Each hand-written fast path the service once had (PNG reader, transposed-conv timing, glibc
# mallopt) against the plain path at 28x28, 64x64 and 128x128; writes bench/results/fastpaths.*.
bench-fastpaths: install
	$(BIN)/python -m bench.fastpaths

# Two scorer settings (user_config fields as JSON) against each other in one session, switched
# every window in ABBA order: CPU of every process and XADD -> scored latency per window;
# writes bench/results/ab.{json,md}. E.g. AB_B='{"batch_wait_timeout_s": 0.005}'.
AB_A ?= {}
AB_B ?= {}
AB_ARGS ?=
bench-ab: install
	$(BIN)/python -m bench.ab --a '$(AB_A)' --b '$(AB_B)' $(AB_ARGS)

# The reliability soak: frames at the full sustained rate the frames step measures, then
# error rate, ingested-to-scored p99, RSS of every process and items lost;
# writes bench/results/reliability.{json,md}.
SOAK_ARGS ?= --soak-seconds 180
bench-soak: install
	$(BIN)/python -m bench.throughput --stem reliability --soak-rate sustained --no-pyod \
	  --train-epochs 0 --batches 64 --concurrency 8 --seconds 3 $(SOAK_ARGS)

clean:
	rm -rf .vlaewatch .pytest_cache .ruff_cache .mypy_cache
