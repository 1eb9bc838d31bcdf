# make demo   -> install, get Fashion-MNIST, train the default run, draw its figures
# make test   -> install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUTPUTS ?= outputs
INSTALLED := $(VENV)/.installed
# $(call quoted,TEXT): TEXT as one shell word, whatever it holds (spaces, quotes): OUTPUTS="my runs" works.
# Hydra reads paths.outputs="..." as one quoted string, so a comma or an apostrophe in the path is
# part of it (not a sweep, not a syntax error).
quoted = '$(subst ','\'',$(1))'

.DEFAULT_GOAL := help
.PHONY: help install data demo test test-fast lint figures status bench clean

help:  ## list the targets
	@grep -E '^[a-z%-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## create .venv and install the package (editable) with its dev tools

# pip takes torch/torchvision from the machine's local copies when they satisfy pyproject's ranges.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's copy of Fashion-MNIST is installed here (never by the Python code) when neither the data folder
# nor the system holds the dataset and we are root on a machine with apt-get; phases.fetch does the rest.
SYSTEM_FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DATA_FASHION_MNIST = $${PHASES_DATA_DIR:-data}/FashionMNIST/raw/train-images-idx3-ubyte

data: install  ## make the default dataset available (data folder, Debian's copy: apt-get when root, or download)
	@if [ ! -f $(SYSTEM_FASHION_MNIST) ] && [ ! -f "$(DATA_FASHION_MNIST)" ] && [ ! -f "$(DATA_FASHION_MNIST).gz" ] \
	  && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist with apt-get"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
	    || echo "apt-get could not install dataset-fashion-mnist; phases.fetch tries torchvision's download"; \
	fi
	$(BIN)/python -m phases.fetch

demo: data  ## the default run (Fashion-MNIST, VGG-8, 2048 steps), then its figures
	$(BIN)/python -m phases.run $(call quoted,paths.outputs="$(OUTPUTS)")
	$(MAKE) --no-print-directory figures OUTPUTS=$(call quoted,$(OUTPUTS))

figures: install  ## figures of every run under $(OUTPUTS) into $(OUTPUTS)/figures/
	$(BIN)/python -m phases.figures --outputs $(call quoted,$(OUTPUTS))

test: install  ## the test suite (end-to-end, resume, SLURM and wheel tests included; about 11 minutes on 2 cores)
	$(BIN)/python -m pytest

test-fast: install  ## the tests that run nothing end to end (no SLURM, browser, wheel or front door): about 90 s
	$(BIN)/python -m pytest -m "not slow"

lint: install  ## ruff over the package, the tests and the notebooks
	$(BIN)/ruff check .

status: install  ## one line per run under $(OUTPUTS): status, step, last RL and accuracy, age (SWEEP=<name> filters)
	$(BIN)/python -m phases.status --outputs $(call quoted,$(OUTPUTS)) $(if $(SWEEP),--sweep $(call quoted,$(SWEEP)))

bench: data  ## speed: our training step vs a bare PyTorch loop; our probe solvers vs the published recipes; probing vs its floor; runs/hour at k runs per GPU
	$(BIN)/python -m phases.bench.training_step
	$(BIN)/python -m phases.bench.probes --outputs $(call quoted,$(OUTPUTS))
	$(BIN)/python -m phases.bench.probing_floor --outputs $(call quoted,$(OUTPUTS))
	$(BIN)/python -m phases.bench.sweep_throughput --skip-without-gpu

sweep-%: install  ## run sweeps/<name>.yaml into $(OUTPUTS) (DRY=1: list its jobs, their status and estimated wall time; ARGS="...": more overrides)
	$(BIN)/python -m phases.sweep sweeps/$*.yaml $(if $(DRY),--dry-run --estimate) -- $(call quoted,paths.outputs="$(OUTPUTS)") $(ARGS)

clean:  ## remove the virtual environment and caches (results in $(OUTPUTS) are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
