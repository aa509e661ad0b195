# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates the uv environment first when it is missing (installing uv itself if absent).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
STAMP := $(VENV)/.compressml-synced
RUN := $(UV) run --frozen --no-sync

.PHONY: env demo test test-fast clean

env: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen
	@touch $@

# A short LAE training run on CPU on the photos bundled with scikit-image; ends with a summary table.
demo: $(STAMP)
	$(RUN) python train.py experiment=demo

test: $(STAMP)
	$(RUN) pytest -q

# unit tests only (skips the slower end-to-end runs)
test-fast: $(STAMP)
	$(RUN) pytest -q -m "not slow"

clean:
	rm -rf logs outputs multirun .pytest_cache
