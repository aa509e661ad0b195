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

# A short LAE training run on CPU on the photos bundled with scikit-image (summary table), then
# evaluate.py on the two held-out photos: our real files beside JPEG and WebP at the nearest bpp.
DEMO_RUN := logs/demo/runs/$(shell date +%Y-%m-%d_%H-%M-%S)
demo: $(STAMP)
	$(RUN) python train.py experiment=demo hydra.run.dir=$(DEMO_RUN)
	$(RUN) python evaluate.py data=samples checkpoint=$(DEMO_RUN)/checkpoints/best.ckpt label=demo hydra.run.dir=$(DEMO_RUN)/evaluate

test: $(STAMP)
	$(RUN) pytest -q

# unit tests only (skips the slower end-to-end runs)
test-fast: $(STAMP)
	$(RUN) pytest -q -m "not slow"

clean:
	rm -rf logs outputs multirun .pytest_cache
