# Two commands do everything on a fresh machine:
#   make reproduce   set up, then run the whole study (demo profile; ARGS="--profile full --data DIR")
#   make test        set up, then run the checks and tests
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup reproduce test system-deps

$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so pip never picks a multi-GB CUDA build; a torch already in the venv is kept
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Chromium lets kaleido write PNG figures and the docs check open the pages; installed when we can.
system-deps:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: PNG figures and the browser check will be skipped"

setup: $(VENV)/.installed system-deps

reproduce: setup
	$(BIN)/mmvae reproduce $(ARGS)

test: setup
	bash .ci/test
