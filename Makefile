# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates the uv environment first when it is missing (installing uv itself if absent).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
STAMP := $(VENV)/.compressml-synced
RUN := $(UV) run --frozen --no-sync

.PHONY: env demo test test-fast lint format bench clean

env: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --all-extras
	@touch $@

# The best first: the premade LAE models (shipped in the package: the default variable-rate lae-vr, its
# own curve compressml-premade-vr, and the fixed-rate lae-q1..q4) on the two held-out photos of
# scikit-image's samples against JPEG, WebP and AVIF (tables, BD-rates, RD plot, report.html with
# crops at the same file size); then a one-minute fine-tuning of the premade lae-q3 on the other
# sample photos (init_from), evaluated the same way against the premade curve. About 3 min on 2 cores.
DEMO_RUN := logs/demo/runs/$(shell date +%Y-%m-%d_%H-%M-%S)
PREMADE := compressml/premade
demo: $(STAMP)
	@echo; echo "== 1/3  the premade models against JPEG, WebP and AVIF on two photos (real files: bpp from their sizes) =="
	$(RUN) python evaluate.py data=samples 'checkpoint=[$(PREMADE)/lae-vr,$(PREMADE)/lae-q1,$(PREMADE)/lae-q2,$(PREMADE)/lae-q3,$(PREMADE)/lae-q4]' \
		label=compressml-premade 'codecs=[jpeg-420,webp,avif]' 'matched=[jpeg-420,webp]' hydra.run.dir=$(DEMO_RUN)/premade
	@echo; echo "== 2/3  fine-tuning the premade lae-q3 for a minute on the sample photos (conf/experiment/demo.yaml) =="
	$(RUN) python train.py experiment=demo hydra.run.dir=$(DEMO_RUN)/train
	@echo; echo "== 3/3  the fine-tuned model, evaluated the same way, beside the premade curve (ref:compressml-premade) =="
	$(RUN) python evaluate.py data=samples checkpoint=$(DEMO_RUN)/train/checkpoints/best.ckpt label=fine-tuned \
		'codecs=[jpeg-420,webp,avif]' 'matched=[jpeg-420,webp]' reference=$(DEMO_RUN)/premade/curves/compressml-premade.json \
		hydra.run.dir=$(DEMO_RUN)/fine-tuned
	@echo; echo "Open $(DEMO_RUN)/premade/report.html and $(DEMO_RUN)/fine-tuned/report.html: the RD plots, the tables and"
	@echo "crops of every codec at the same file size. BD-rate: the bits the learned curve needs for the same quality"
	@echo "(PSNR or MS-SSIM), relative to the other codec; negative means fewer bits."

test: $(STAMP) lint
	$(RUN) pytest -q

# house style (pyproject.toml [tool.ruff]): `make format` applies it
lint: $(STAMP)
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: $(STAMP)
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

# unit tests only (skips the slower end-to-end runs)
test-fast: $(STAMP)
	$(RUN) pytest -q -m "not slow"

# The benchmark suite on the premade models (compressml/premade): JSON and PNG plots into
# benchmarks/results/. RD on Kodak (the default lae-vr and the lae-q family against JPEG, WebP, AVIF and
# CompressAI's published curves) and on Set14 + Set5, training throughput and Lightning's per-step
# overhead, codec speed, RED on Set5/Set14, lossless.
# Needs ../shared/data (Kodak, Set5, Set14, the training photos). About 45 min on 2 CPU cores
# (the RD run also measures the family with compress --refine 50).
BENCH := $(RUN) python benchmarks
bench: $(STAMP)
	$(BENCH)/rd_kodak.py --refine 50
	$(BENCH)/rd_kodak.py --images-dir ../shared/data/set14/HR ../shared/data/set5/HR --out benchmarks/results/rd_other.json
	$(BENCH)/learning_curve.py --images 8 4.11=benchmarks/models/vr-mean_scale-13695 4.94=benchmarks/models/vr-mean_scale-13695-plus8154 6.95=benchmarks/models/vr-mean_scale-chain-7h 8.03=benchmarks/models/vr-mean_scale-chain-8h
	$(BENCH)/train_throughput.py --steps 60 --rounds 5
	$(BENCH)/lightning_overhead.py
	$(BENCH)/train_options.py
	$(BENCH)/codec_speed.py --variants mean_scale --checkpoint mean_scale=compressml/premade/lae-q3 --out benchmarks/results/codec_speed_premade.json
	$(BENCH)/red_sr.py --premade --out benchmarks/results/red_premade.json
	$(BENCH)/mllae_kodak.py --lossless compressml/premade/mllae-lossless --lossless-only --out benchmarks/results/mllae_premade.json
	$(BENCH)/mllae_anchors.py --threads 1

clean:
	rm -rf logs outputs multirun .pytest_cache
