# Every target builds or refreshes .venv from the repository's files (pyproject.toml + constraints.txt).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Models are cached here so tests, demo and benchmarks share one export (override with DQE_HOME=...).
export DQE_HOME ?= $(CURDIR)/.dqe-home
EXTRAS := fast,batch,train,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
PROTO_SRC := $(wildcard proto/dqe/v1/*.proto)

.PHONY: venv model demo test lint typecheck proto proto-check bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[$(EXTRAS)]" -c constraints.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

model: venv
	$(BIN)/dqe model export

demo: model
	$(BIN)/python -m service.demo

lint: venv
	$(BIN)/ruff check service models training tests benchmarks
	$(BIN)/ruff format --check service models training tests benchmarks

typecheck: venv
	$(BIN)/mypy service models training

proto: venv
	$(BIN)/python -m service.protogen

proto-check: venv
	$(BIN)/python -m service.protogen --check

test: model lint typecheck proto-check
	$(BIN)/python -m pytest -q

bench: model
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .dqe-home .pytest_cache .mypy_cache .ruff_cache
