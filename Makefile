# `make demo` and `make test` work on a fresh clone: they create .venv and install the project.
VENV ?= .venv
# Extra requirements for this venv, e.g. EXTRA_PIP='sqlalchemy<2.1' to test on SQLAlchemy 2.0.
EXTRA_PIP ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]" $(if $(EXTRA_PIP),'$(EXTRA_PIP)')
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sqla-signed-urls demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	@status=0; for bench in fast_path refresh async prefetch signers; do \
		$(PY) benchmarks/bench_$$bench.py || status=1; echo; \
	done; exit $$status
