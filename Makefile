# Every target sets up .venv itself. A torch already importable by $(PY) is reused
# (the venv then sees the system site-packages); otherwise TORCH_SPEC is installed
# (the small CPU build on this machine; override e.g. TORCH_SPEC=torch for CUDA).
PY ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint bench bench-gpu bench-gpu-dry kernels-report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "reusing the torch that $(PY) already has"; $(PY) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PY) -m venv $(VENV) && $(BIN)/pip install -q "$(TORCH_SPEC)"; \
	  fi; \
	fi
	$(BIN)/pip install -q -e ".[test,dev]"
	@rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)
	$(BIN)/mi demo

# The whole suite: torch backend, Triton kernels in the interpreter (CPU), the
# ahead-of-time sm_80/sm_90 compile with its no-spill check, the GPU benchmark's dry run.
# In JOBS pytest-xdist workers (default: one per usable core, at most 4; JOBS=0 runs in
# this process), which share the cores' intra-op threads (conftest.py).
JOBS ?= $(shell $(PY) -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(max(1, min(4, n or 1)))")
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n $(JOBS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check mi kernels tests bench

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/bench_cpu.py

bench-gpu: $(STAMP)
	$(BIN)/python bench/bench_gpu.py
	$(BIN)/python bench/bench_regime.py --sweep

bench-gpu-dry: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python bench/bench_gpu.py --dry-run
	TRITON_INTERPRET=1 $(BIN)/python bench/bench_regime.py --dry-run

kernels-report: $(STAMP)
	$(BIN)/python -m mi.kernels.report

clean:
	rm -rf $(VENV) build *.egg-info
