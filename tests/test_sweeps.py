"""Sweeps: multirun RD curves (evaluate.py sweep=DIR), the sweep report and its W&B run, the
Optuna search, the SLURM launcher config and the submitit_local launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose_train, save_tiny_checkpoint

from compressml.errors import ConfigError, DataError
from compressml.evaluation import evaluate_from_config, sweep_models
from compressml.loggers import _offline_records, read_wandb_offline_config, read_wandb_offline_history
from compressml.sweep_jobs import _short
from compressml.sweeps import distinguishing_labels, sweep_jobs, sweep_report
from compressml.training import objective

TINY_SWEEP = [
    "trainer=smoke",
    "data=folder",
    "data.crop_size=64",
    "data.val_crop_size=64",
    "data.batch_size=2",
    "model.net.channels=8",
    "model.net.latent_channels=8",
]


def env() -> dict:
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1")


def run_train(args: list[str], extra_env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def fake_job(root: Path, num: int, overrides: list[str], best: dict | None = None, checkpoint: Path | None = None) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if best is not None:
        summary = {
            "best": best,
            "overrides": overrides,
            "objective": best.get("val/loss"),
            "global_step": 3,
            "best_checkpoint": str(checkpoint) if checkpoint else None,
        }
        (job / "summary.json").write_text(json.dumps(summary))
    return job


# -- unit: gathering a sweep's jobs -----------------------------------------------------------
def test_labels_keep_only_what_differs():
    labels = distinguishing_labels([["trainer=gpu", "g.lmbda=0.0018"], ["trainer=gpu", "g.lmbda=0.0035"]])
    assert labels == ["g.lmbda=0.0018", "g.lmbda=0.0035"]
    assert distinguishing_labels([["model=lae/hyperprior", "x=1"], ["model=lae/mean_scale", "x=1"]]) == [
        "model=lae-hyperprior",
        "model=lae-mean_scale",
    ]
    assert _short("model.optimizer.lr=0.00024156772025296256") == "model.optimizer.lr=0.0002416"
    assert _short("data.batch_size=16") == "data.batch_size=16"


def test_sweep_jobs_read_summaries_and_find_moved_checkpoints(tmp_path):
    root = tmp_path / "sweep"
    ckpt = save_tiny_checkpoint(tmp_path / "elsewhere" / "epoch_000.ckpt")
    job0 = fake_job(root, 0, ["g.lmbda=0.01"], {"val/loss": 2.0, "val/bpp": 0.5, "val/psnr": 30.0}, ckpt)
    job1 = fake_job(
        root,
        1,
        ["g.lmbda=0.02"],
        {"val/loss": 1.0, "val/bpp_real": 0.9, "val/bpp": 0.8, "val/psnr": 33.0},
        tmp_path / "moved" / "epoch_001.ckpt",
    )  # the summary names a path that is gone ...
    (job1 / "checkpoints").mkdir()
    moved = save_tiny_checkpoint(job1 / "checkpoints" / "epoch_001.ckpt", seed=1)  # ... found in checkpoints/
    fake_job(root, 10, ["g.lmbda=0.04"])  # a job that never finished: overrides only, no checkpoint
    (root / "wandb").mkdir()  # not a job
    jobs = sweep_jobs(root)
    assert [j.number for j in jobs] == [0, 1, 10]
    assert [j.label for j in jobs] == ["g.lmbda=0.01", "g.lmbda=0.02", "g.lmbda=0.04"]
    assert jobs[0].checkpoint == ckpt and jobs[1].checkpoint == moved and jobs[2].checkpoint is None
    models = sweep_models(root, "mine")
    assert [(m.setting, m.curve) for m in models] == [("g.lmbda=0.01", "mine"), ("g.lmbda=0.02", "mine")]

    report = sweep_report(root, evaluate=False)
    rows = report["table"]
    assert rows[1]["bpp"] == 0.9  # real-file bpp preferred to the estimate
    assert rows[0]["bpp"] == 0.5 and rows[2]["bpp"] is None
    for name in ("sweep_report.json", "sweep_report.csv", "sweep_rd.png"):
        assert (root / name).is_file()
    assert job0.is_dir()


def test_duplicate_overrides_get_job_numbers(tmp_path):
    fake_job(tmp_path, 0, ["seed=1"])
    fake_job(tmp_path, 1, ["seed=1"])
    assert [j.label for j in sweep_jobs(tmp_path)] == ["seed=1@0", "seed=1@1"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_not_a_sweep_is_a_one_line_error(tmp_path, make):
    root = tmp_path / "x"
    if make == "empty":
        root.mkdir()
        (root / "notes").mkdir()
    with pytest.raises(DataError, match="sweep"):
        sweep_jobs(root)


def test_objective_is_the_configured_metric():
    summary = {"best": {"val/loss": 3.5, "val/bpp": 0.4, "val/psnr": 31.0}}
    assert objective("val/loss", summary) == 3.5
    assert objective(["val/bpp", "val/psnr"], summary) == [0.4, 31.0]
    assert objective(None, summary) is None
    with pytest.raises(ConfigError, match="val/psnr_real.*logged: val/bpp, val/loss, val/psnr"):
        objective("val/psnr_real", summary)


def test_optimized_metric_defaults_to_the_rd_loss(tmp_path):
    cfg = compose_train([], tmp_path)
    assert cfg.optimized_metric == "val/loss"
    cfg = compose_train(["hparams_search=lae_optuna"], tmp_path)
    assert cfg.optimized_metric == "val/loss"


def test_evaluate_sweep_dir_draws_one_curve(tmp_path, image_folder):
    root = tmp_path / "sweep"
    for i, lmbda in enumerate(("0.01", "0.02", "0.04")):
        ckpt = save_tiny_checkpoint(tmp_path / f"c{i}" / "best.ckpt", seed=i)
        fake_job(root, i, ["trainer=cpu", f"g.lmbda={lmbda}"], {"val/loss": 1.0}, ckpt)
    cfg = compose_train(
        [
            f"sweep={root}",
            f"images={image_folder}",
            "max_images=2",
            "codecs=[jpeg-420,webp]",
            "settings.jpeg-420=[20,50,80]",
            "settings.webp=[20,50,80]",
            "matched=[]",
        ],
        tmp_path / "eval",
        config_name="evaluate",
    )
    result = evaluate_from_config(cfg)
    assert result["learned"] == ["compressml-hyperprior"]
    assert sorted(result["curves"]["compressml-hyperprior"]["setting"]) == ["g.lmbda=0.01", "g.lmbda=0.02", "g.lmbda=0.04"]
    assert set(result["bd_rate"]["compressml-hyperprior"]) == {"jpeg-420", "webp"}
    assert (tmp_path / "eval" / "rd.png").is_file()


# -- end to end: a real multirun through submitit_local, then the report, W&B and evaluate.py --------
@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory):
    from conftest import smooth_image
    from PIL import Image

    tmp = tmp_path_factory.mktemp("submitit")
    images = tmp / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(smooth_image(72, 80, seed=i)).save(images / f"img{i}.png")
    sweep = tmp / "sweep"
    r = run_train(
        [
            "-m",
            "hydra/launcher=submitit_local",
            *TINY_SWEEP,
            f"data.root={images}",
            "logger=wandb",
            "g.lmbda=0.002,0.2",
            f"hydra.sweep.dir={sweep}",
            "hydra.callbacks.sweep_report.codecs=[jpeg-420,webp]",
            f"paths.cache_dir={tmp / 'cache'}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return sweep, r


@pytest.mark.slow
def test_submitit_local_runs_every_job(submitit_sweep):
    sweep, _ = submitit_sweep
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
    for num, lmbda in ((0, 0.002), (1, 0.2)):
        summary = json.loads((sweep / str(num) / "summary.json").read_text())
        assert f"g.lmbda={lmbda}" in summary["overrides"]
        assert summary["config"]["g"]["lmbda"] == lmbda
        assert Path(summary["best_checkpoint"]).is_file()
        assert summary["objective"] == summary["best"]["val/loss"]


@pytest.mark.slow
def test_sweep_ends_with_a_report_logged_to_wandb(submitit_sweep):
    sweep, r = submitit_sweep
    report = json.loads((sweep / "sweep_report.json").read_text())
    assert [row["label"] for row in report["table"]] == ["g.lmbda=0.002", "g.lmbda=0.2"]
    assert all(row["bpp"] > 0 and row["psnr"] > 0 for row in report["table"])
    evaluation = report["evaluation"]
    assert set(evaluation["bd_rate"]["compressml-mean_scale"]) == {"jpeg-420", "webp"}
    assert (sweep / "evaluate" / "rd.png").is_file() and (sweep / "sweep_rd.png").is_file()
    assert "sweep_report.json" in r.stdout  # the report table was printed

    runs = {}
    for run_dir in sweep.glob("**/offline-run-*"):
        (run,) = [rec.run for rec in _offline_records(str(run_dir)) if rec.WhichOneof("record_type") == "run"]
        runs[run.display_name] = (run, run_dir)
    group = f"train-{sweep.name}"
    assert {name: run.run_group for name, (run, _) in runs.items()} == {"train-0": group, "train-1": group, f"{group}-report": group}
    report_run, report_dir = runs[f"{group}-report"]
    assert report_run.job_type == "sweep-report"
    keys = {k.split("/")[0] + "/" + k.split("/")[1] for row in read_wandb_offline_history(str(report_dir)) for k in row if "/" in k}
    assert {"sweep/rd_table", "sweep/rd_plot", "sweep/rd_plot_real_files", "sweep/bd_rate"} <= keys
    config = read_wandb_offline_config(str(runs["train-1"][1]))  # the full config of a job, and its overrides
    assert config["g"]["lmbda"] == 0.2 and config["model"]["net"]["channels"] == 8 and "trainer" in config
    assert "g.lmbda=0.2" in config["overrides"]


@pytest.mark.slow
def test_evaluate_entry_point_on_the_sweep(submitit_sweep, tmp_path):
    sweep, _ = submitit_sweep
    images = sweep.parent / "images"
    r = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"sweep={sweep}",
            f"images={images}",
            "max_images=1",
            "codecs=[jpeg-420]",
            "settings.jpeg-420=[30,60,90]",
            "matched=[]",
            f"hydra.run.dir={tmp_path}/ev",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["curves"]["compressml-mean_scale"]["setting"] != []
    assert len(result["curves"]["compressml-mean_scale"]["bpp"]) == 2


# -- Optuna ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_optuna_search_minimises_the_returned_objective(tmp_path, image_folder):
    sweep = tmp_path / "optuna"
    r = run_train(
        [
            "hparams_search=lae_optuna",
            "hydra.sweeper.n_trials=2",
            *TINY_SWEEP,
            f"data.root={image_folder}",
            "logger=csv",
            "hydra.sweeper.params={model.optimizer.lr: 'tag(log, interval(1e-4, 1e-2))'}",
            "data.batch_size=2",
            "model.aux_lr=0.001",
            f"hydra.sweep.dir={sweep}",
            "hydra.callbacks.sweep_report.evaluate=false",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [json.loads((sweep / str(i) / "summary.json").read_text())["objective"] for i in range(2)]
    assert results["best_value"] == pytest.approx(min(values))
    assert set(results["best_params"]) == {"model.optimizer.lr"}
    assert (sweep / "sweep_report.json").is_file()


# -- SLURM: the sbatch script the launcher would submit (sbatch itself is a stand-in here) ---------------
def test_slurm_launcher_config_reaches_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    capture = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "sbatch: stand-in" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    r = run_train(
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.account=lab",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.timeout_min=90",
            "g.lmbda=0.0018,0.0035,0.0067,0.013",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        extra_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(capture)},
        timeout=120,
    )
    assert r.returncode != 0 and "stand-in" in r.stderr  # nothing was really submitted
    script = capture.read_text()
    for line in ("--partition=gpu", "--account=lab", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--time=90", "--array=0-3%"):
        assert f"#SBATCH {line}" in script, line
    assert "srun" in script and "submitit.core._submit" in script


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(tmp_path, image_folder):
    sweep = tmp_path / "sweep"
    r = run_train(["-m", *TINY_SWEEP, f"data.root={image_folder}", "logger=none", "g.lmbda=-1,0.01", f"hydra.sweep.dir={sweep}"])
    assert r.returncode != 0  # the sweep reports the failed job ...
    assert "g.lmbda must be > 0" in r.stderr + r.stdout
    assert not (sweep / "0" / "summary.json").exists()
    assert json.loads((sweep / "1" / "summary.json").read_text())["objective"] is not None  # ... after running the rest
