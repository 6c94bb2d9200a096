# Two commands on a fresh clone: `make demo` and `make test` (each builds .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint clean

install: $(STAMP)

# CPU torch first (pinned to the wheel on this machine), so nothing pulls a CUDA build.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[rl,dev]"
	touch $(STAMP)

demo: install
	$(PY) examples/bc_then_rl.py

# Test files spread over JOBS processes (pytest-xdist), each file in one (its compiled builds
# are made once).
JOBS ?= 2

test: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile

test-all: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
