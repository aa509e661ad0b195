# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates the uv environment first when it is missing (installing uv itself if absent).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
STAMP := $(VENV)/.compressml-synced
RUN := $(UV) run --frozen --no-sync

.PHONY: env demo test test-fast bench clean

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

# The benchmark suite on the premade models (compressml/premade): JSON and PNG plots into
# benchmarks/results/. RD on Kodak, training throughput, codec speed, RED on Set5/Set14, lossless.
# Needs ../shared/data (Kodak, Set5, Set14, the training photos). About 45 min on 2 CPU cores
# (the RD run also measures the family with compress --refine 50).
BENCH := $(RUN) python benchmarks
bench: $(STAMP)
	$(BENCH)/rd_kodak.py --refine 50
	$(BENCH)/train_throughput.py
	$(BENCH)/train_options.py
	$(BENCH)/codec_speed.py --variants mean_scale --checkpoint mean_scale=compressml/premade/lae-q3 --out benchmarks/results/codec_speed_premade.json
	$(BENCH)/red_sr.py --premade --out benchmarks/results/red_premade.json
	$(BENCH)/mllae_kodak.py --lossless compressml/premade/mllae-lossless --lossless-only --out benchmarks/results/mllae_premade.json

clean:
	rm -rf logs outputs multirun .pytest_cache
