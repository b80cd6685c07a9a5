# The two commands: `make demo` and `make test`. Both create or refresh .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before the project so that a CPU machine never pulls CUDA wheels; override on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# e.g. make ablations ABLATIONS_ARGS=--quick (one seed, short streams)
ABLATIONS_ARGS ?=


.PHONY: venv lint test test-all test-serve-live browser demo ablations tensorboard bench gpu-wheels clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,cluster]"
	touch $(STAMP)

venv: $(STAMP)

# ruff (configured in pyproject.toml); `make test` runs it first, so CI fails on a lint error too
lint: venv
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian's chromium for the browser tests of `lit-avatar serve` (tests/test_serve_live.py, marked slow)
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# `lit-avatar serve` in real time: browser, lip sync (after `make demo`), 4 sessions, 10-minute memory
test-serve-live: venv browser
	$(PY) -m pytest -m slow -q -s tests/test_serve_live.py $(PYTEST_ARGS)

demo: venv
	$(PY) -m lit_avatar.demo --out runs/demo

ablations: venv
	$(PY) -m lit_avatar.ablations --out runs/ablations $(ABLATIONS_ARGS)

tensorboard: venv
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1

bench: venv
	$(PY) -m lit_avatar.cli bench stream

# What bench/gpu.sh needs beyond the GPU image (torch, transformers, lightning are there; diffusers is not):
# pure-Python wheels for its Python 3.12, fetched here, carried to the device in .whl/ (git-ignored).
GPU_WHEELS ?= diffusers==0.42.1 importlib_metadata==10.2.0
gpu-wheels: venv
	rm -rf .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)
	ls -l .whl

clean:
	rm -rf runs .pytest_cache
