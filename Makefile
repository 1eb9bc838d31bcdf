# make demo   -> install, get Fashion-MNIST, train the default run, draw its figures
# make test   -> install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUTPUTS ?= outputs
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install data demo test figures bench clean

help:  ## list the targets
	@grep -E '^[a-z%-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## create .venv and install the package (editable) with its dev tools

# pip takes torch/torchvision from the machine's local copies when they satisfy pyproject's ranges.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

data: install  ## make the default dataset available (data folder, system copy, apt, or download)
	$(BIN)/python -m phases.fetch

demo: data  ## the default run (Fashion-MNIST, VGG-8, 2048 steps), then its figures
	$(BIN)/python -m phases.run paths.outputs=$(OUTPUTS)
	$(MAKE) --no-print-directory figures OUTPUTS=$(OUTPUTS)

figures: install  ## figures of every run under $(OUTPUTS) into $(OUTPUTS)/figures/
	$(BIN)/python -m phases.figures --outputs $(OUTPUTS)

test: install  ## the test suite (end-to-end, resume and SLURM tests included; about 10 minutes on 2 cores)
	$(BIN)/python -m pytest

bench: data  ## speed: our training step vs a bare PyTorch loop; our probe solvers vs the published recipes
	$(BIN)/python -m phases.bench
	$(BIN)/python -m phases.bench_probes --outputs $(OUTPUTS)

sweep-%: install  ## run sweeps/<name>.yaml (DRY=1: list its jobs and their status; ARGS="...": more overrides)
	$(BIN)/python -m phases.sweep sweeps/$*.yaml $(if $(DRY),--dry-run) $(if $(ARGS),-- $(ARGS))

clean:  ## remove the virtual environment and caches (results in $(OUTPUTS) are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
