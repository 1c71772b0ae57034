# cpx: `make demo` and `make test` work on a fresh machine (they run `make setup` first).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.cpx
RUST_SRC := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml $(wildcard Cargo.lock) pyproject.toml
# A local directory of wheels (for example a CPU-only torch) that pip may prefer.
WHEELHOUSE ?=
PIP_FIND := $(if $(WHEELHOUSE),--find-links $(WHEELHOUSE),)
DEMO_RUN := runs/demo

.PHONY: setup slurm demo next-steps test test-rust test-python bench lint clean

setup: $(STAMPS)/ext

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMPS)/deps: requirements.lock | $(PY)
	$(PY) -m pip install -q $(PIP_FIND) -r requirements.lock
	mkdir -p $(STAMPS) && touch $@

# The extension, built in release mode; the package itself is installed editable.
$(STAMPS)/ext: $(STAMPS)/deps $(RUST_SRC)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/maturin develop --release -q
	touch $@

# Debian's Slurm and munge for the Slurm executor's tests (tests/execute/test_exec_slurm.py start
# a private one-node cluster on them). Quick when they are installed; needs root (or sudo).
SLURM_PKGS := slurmctld slurmd slurm-client munge
SLURM_BINS := slurmctld slurmd sbatch squeue sacct scancel sinfo scontrol munged
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
slurm:
	@missing=""; for b in $(SLURM_BINS); do PATH=$$PATH:/usr/sbin command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then echo "slurm: installed"; else \
	  echo "slurm: installing $(SLURM_PKGS) (missing:$$missing)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(SLURM_PKGS); fi

demo: setup
	$(VENV)/bin/cpx compile specs/demo.yaml --out $(DEMO_RUN)
	$(VENV)/bin/cpx execute
	@echo "report: $(DEMO_RUN)/report/report.md (and report.html)"

# The seed report's next steps on the tiny model: a steering arm, three seeds, a power section.
next-steps: setup
	$(VENV)/bin/cpx compile specs/next_steps.yaml --out runs/next_steps
	$(VENV)/bin/cpx execute runs/next_steps
	@echo "report: runs/next_steps/report/report.md (and report.html)"

test: setup test-rust test-python

test-rust:
	cargo test -p cpx-core --quiet

test-python: setup
	$(PY) -m pytest -q

# The CPU benchmarks; benches/gpu_*.py run on a GPU machine (benches/RESULTS.md).
CPU_BENCHES := $(filter-out benches/gpu_%.py benches/_%.py,$(wildcard benches/*.py))

bench: setup
	@for b in $(CPU_BENCHES); do echo "== $$b"; $(PY) $$b; done

# Lint: ruff (rules in pyproject's [tool.ruff.lint]), mypy ([tool.mypy]), the stub check,
# rustfmt and clippy with every warning an error. CI runs it before `make test`.
LINT_PY := python tests benches

lint: setup
	$(VENV)/bin/ruff check $(LINT_PY)
	$(VENV)/bin/ruff format --check $(LINT_PY)
	$(VENV)/bin/mypy python/cpx
	CPX_ALLOW_DEBUG_BUILD=1 $(PY) -m mypy.stubtest cpx._core
	cargo fmt --check
	PATH=$(abspath $(VENV))/bin:$$PATH cargo clippy --all-targets --quiet -- -D warnings

clean:
	rm -rf $(VENV) target runs
