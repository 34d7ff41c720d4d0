# Two commands for a newcomer: `make run` (the whole pipeline locally) and `make test`.
# Both create .venv and install the package with its dev extras. CONSTRAINTS pins torch to the
# CPU wheel so a laptop or CI does not pull a multi-GB CUDA build; on a GPU machine use
# `make install CONSTRAINTS=` to let pip pick the CUDA torch. LOCK holds every other dependency
# at the versions CI tested and the images install (images/lock.sh re-pins it); `LOCK=` resolves
# the newest releases instead (the scheduled `newest` CI job does).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
LOCK ?= images/requirements.lock
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test compile clean

$(STAMP): pyproject.toml $(CONSTRAINTS) $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) $(if $(LOCK),-c $(LOCK)) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/selfguided run

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder  # order: tests/conftest.py LONGEST_FIRST

compile: $(STAMP)
	$(BIN)/selfguided compile -o pipelines/selfguided_pipeline.yaml
	$(BIN)/python -m selfguided.pipelines.monitor_pipeline pipelines/selfguided_monitor.yaml
	$(BIN)/python -m selfguided.pipelines.flywheel_pipeline pipelines/selfguided_flywheel.yaml

clean:
	rm -rf .selfguided .pytest_cache build *.egg-info
