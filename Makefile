# `make demo` and `make test` work on a fresh machine: they create .venv and
# install optlab with its pinned dependencies (constraints.txt) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray

.PHONY: demo test test-ray lint bench clean install

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# LAMB's oracle: its metadata asks for torchvision, which its optimizer never imports
	# (and whose wheels pin other torch builds); installed without it.
	$(BIN)/python -m pip install --quiet --no-deps pytorch-lamb==1.0.0
	touch $(STAMP)

install: $(STAMP)

# Ray (optlab[ray]) only for the Ray tests: `make test` and `make install` stay without it.
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(RAY_STAMP)

demo: $(STAMP)
	$(BIN)/python -m optlab.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The tests marked `ray`: a real local Ray cluster (a head and a worker node, loopback only).
test-ray: $(RAY_STAMP)
	$(BIN)/python -m pytest -q -p no:xdist -m ray tests/lab/test_ray.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/step_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
