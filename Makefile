# The two commands of the README: `make demo` and `make test`. Both set everything up on a
# fresh machine: a virtual environment in .venv, torch (the CPU build 2.13.0 where no torch
# is present), and this package in editable mode with its test extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*/*.cpp csrc/*/*.h csrc/*/*/*.h csrc/*/*.cu csrc/*/*/*.cu csrc/*/*.cuh csrc/*/*/*.cuh)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "setuptools>=64" wheel
	# the napari plugin's tests run Qt under Xvfb: its system libraries, where missing (apt, as root)
	@sh scripts/qt_system_deps.sh
	# builds the C++ kernels (and CUDA ones where torch has CUDA) against the installed torch
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m napari_stnls demo --out out/demo.png
	# napari with the sample and the widgets docked, after a region -> flow -> search ->
	# neighbours -> denoise session; without $$DISPLAY it runs headless under xvfb-run
	$(PY) -m napari_stnls.plugin._qt.session --screenshot out/napari.png

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# the cases marked slow (over 30 s on 2 cores), which `make test` leaves out
test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py --out out/bench.json

clean:
	rm -rf $(VENV) out build *.egg-info
