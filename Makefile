# Two commands do all setup on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# Re-run only when the dependency list changes: seconds when already done.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	# lpips ships the LPIPS linear-layer weights; its torchvision import does not work here, so it is
	# installed without dependencies and only its weight files are read (harp_kaolin/perceptual.py).
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps lpips==0.1.4
	touch $(STAMP)

demo: setup
	$(BIN)/harp demo --out outputs/demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python benchmarks/render.py --size 448 --batch 8 --json
	$(BIN)/python benchmarks/energies.py --batch 18 --json
	$(BIN)/python benchmarks/render_fps.py --size 448 --json

clean:
	rm -rf $(VENV) outputs
