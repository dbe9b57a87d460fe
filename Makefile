# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch: a plain `pip install torch` would pull a multi-GB CUDA build.
CPU_TORCH ?= torch==2.13.0

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: torch comes from the project's dependencies"; \
	else \
		echo "no CUDA GPU: installing the CPU build of torch ($(CPU_TORCH))"; \
		$(BIN)/pip install -q $(CPU_TORCH); \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: install
	$(BIN)/lmtune demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
