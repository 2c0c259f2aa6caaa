# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv if absent and install
# torch 2.13.0 (CPU build) before the package, so pip never pulls a CUDA build of torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: demo test setup clean mutation

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/oddframe demo --out oddframe-demo

test: setup
	$(PY) -m pytest -q -n 2

# Mutation testing (docs/TESTING.md): needs the `mutation` extra. mutants/src must exist before the run, or
# mutmut records no coverage.
mutation: setup
	$(PY) -m pip install --quiet -e '.[mutation]'
	mkdir -p mutants/src
	PYTHONPATH=$(CURDIR)/mutants/src $(VENV)/bin/mutmut run --max-children 1

clean:
	rm -rf $(VENV) oddframe-demo .pytest_cache mutants
