# The two commands of the README: `make demo` and `make test`. Both set everything up on a
# fresh machine: a virtual environment in .venv, torch (the CPU build 2.13.0 where no torch
# is present), the compiled kernels, and this package in editable mode with its test extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*/*.cpp csrc/*/*.h csrc/*/*/*.h csrc/*/*.cu csrc/*/*/*.cu csrc/*/*.cuh csrc/*/*/*.cuh)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Three jobs overlap: the Qt system libraries the plugin's tests need under Xvfb (apt, as
	@# root, only those missing) install from the start; once torch is in, the C++ kernels (and
	@# the CUDA ones where torch has CUDA) build in place against it (ninja: a compile job per
	@# core; without it setuptools compiles one file after another) while pip installs the
	@# package in editable mode with its test extras, without a build of its own
	@# (NAPARI_STNLS_BUILD=0): it finds the kernels built in place.
	@sh scripts/qt_system_deps.sh > $(VENV)/apt.log 2>&1 & apt=$$!; \
	{ $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile torch==2.13.0; } && \
	$(PY) -m pip install -q "setuptools>=64" wheel ninja || exit 1; \
	echo "building the C++ kernels (log: $(VENV)/build.log) and installing the dependencies"; \
	$(PY) setup.py -q build_ext --inplace > $(VENV)/build.log 2>&1 & build=$$!; \
	NAPARI_STNLS_BUILD=0 $(PY) -m pip install -q --no-compile --no-build-isolation -e '.[test]'; rc=$$?; \
	wait $$apt; cat $(VENV)/apt.log; \
	if ! wait $$build; then cat $(VENV)/build.log; echo "the C++ build failed (log above)"; exit 1; fi; \
	exit $$rc
	@$(PY) -c "from napari_stnls.ops import _library as l; assert l.LOAD_ERROR is None, l.LOAD_ERROR"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m napari_stnls demo --out out/demo.png
	# napari with the sample and the widgets docked, after a region -> flow -> search ->
	# neighbours -> denoise session; without $$DISPLAY it runs headless under xvfb-run
	$(PY) -m napari_stnls.plugin._qt.session --screenshot out/napari.png

# one pytest worker per core (pytest-xdist), each on one thread: 2 OpenMP threads per
# worker on 2 cores spin against each other
test: $(STAMP)
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto

# the cases marked slow (over 30 s on 2 cores), which `make test` leaves out
test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py --out out/bench.json

clean:
	rm -rf $(VENV) out build *.egg-info
