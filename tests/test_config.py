"""Every option of every config group composes; bad values fail with a clear message."""

from __future__ import annotations

import pytest
from conftest import CONF, TINY, TINY_MLLAE, compose_train, run_cli
from hydra.utils import instantiate

from compressml.errors import ConfigError
from compressml.training import check_config

GROUPS = ["data", "model", "g", "trainer", "logger", "callbacks", "paths", "hydra", "experiment", "hparams_search", "hydra/launcher"]


def options(group: str) -> list[str]:
    base = CONF / group
    # hydra/launcher is a group of its own
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml") if group != "hydra" or p.parent == base)


ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"
    assert {"lae", "lae/factorized", "lae/hyperprior", "lae/mean_scale", "mllae", "red"} <= set(options("model"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_sim", "smoke"} <= set(options("trainer"))


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "folder":
        overrides.append(f"data.root={tmp_path}")
    cfg = compose_train(overrides, tmp_path)
    assert cfg.task_name
    if group not in ("hydra", "hydra/launcher", "experiment", "hparams_search", "paths"):
        selected = cfg[group]
        assert selected is None or isinstance(selected, type(cfg)) or selected == {}


@pytest.mark.parametrize("variant", ["factorized", "hyperprior", "mean_scale"])
def test_lae_variants_instantiate(variant, tmp_path):
    cfg = compose_train([f"model=lae/{variant}", "model.net.channels=8", "model.net.latent_channels=8"], tmp_path)
    from omegaconf import OmegaConf

    model = instantiate(cfg.model, g=OmegaConf.to_container(cfg.g))
    assert model.hparams.net["arch"] == variant
    assert (
        type(model.net).__name__
        == {"factorized": "FactorizedPrior", "hyperprior": "ScaleHyperprior", "mean_scale": "MeanScaleHyperprior"}[variant]
    )


def test_default_lae_is_mean_scale(tmp_path):
    cfg = compose_train([], tmp_path)
    assert cfg.model.net.arch == "mean_scale"
    assert cfg.data._target_.endswith("SampleImagesDataModule")
    assert "wandb" in cfg.logger


def test_missing_data_root_is_reported(tmp_path):
    cfg = compose_train(["data=folder"], tmp_path)
    with pytest.raises(ConfigError, match="data.root"):
        check_config(cfg)


def test_cli_unknown_model(tmp_path):
    res = run_cli(["train.py", "model=nope", f"paths.log_dir={tmp_path}"])
    assert res.returncode != 0
    assert "model/nope" in res.stderr or "model=nope" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (TINY + ["data=folder"], "data.root"),
        (TINY + ["data=folder", "data.root=/no/such/dir"], "no such directory"),
        (TINY + ["g.distortion=psnr"], "g.distortion must be one of"),
        (TINY + ["ckpt_path=/no/such.ckpt"], "no such checkpoint"),
        (TINY + ["g._target_=compressml.g.nope"], "cannot be imported"),
        (TINY_MLLAE + ["model.bytes=0"], "model.bytes"),
        (TINY_MLLAE + ["model.quantizer=gumbel"], "unknown quantizer"),
        (TINY_MLLAE + ["model.entropy=zstd"], "model.entropy"),
        (TINY + ["data.val_crop_size=0"], "val_crop_size"),
        (TINY + ["data.num_workers=-1"], "num_workers"),
        (TINY + ["model.optimizer.lr=-1"], "learning rate"),
        (TINY + ["ckpt_path=" + __file__], "not a loadable checkpoint"),
        (TINY + ["trainer.precision=bogus"], "bogus"),
    ],
    ids=[
        "missing-root",
        "bad-root",
        "bad-distortion",
        "missing-ckpt",
        "bad-g-target",
        "mllae-bytes",
        "mllae-quantizer",
        "mllae-entropy",
        "val-crop",
        "workers",
        "negative-lr",
        "not-a-ckpt",
        "bad-precision",
    ],
)
def test_bad_values_raise_config_errors(overrides, needle, tmp_path):
    from compressml.errors import CompressMLError
    from compressml.training import train

    cfg = compose_train(overrides, tmp_path)
    with pytest.raises(CompressMLError, match=needle.replace(".", r"\.")):
        train(cfg)


def test_cli_user_error_is_one_line(tmp_path):
    res = run_cli(["train.py", *TINY, "g.lmbda=-1", f"paths.log_dir={tmp_path}"])
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.strip().splitlines() if line.startswith("error:")]
    assert errors == ["error: g.lmbda must be > 0, got -1.0"] or errors == ["error: g.lmbda must be > 0, got -1"]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_compressml_hydra_commands_compose_their_configs(command, capsys, monkeypatch, tmp_path):
    from compressml.cli import main

    monkeypatch.chdir(tmp_path)  # from any folder: the shipped configs are found beside the package
    assert main([command, "--cfg", "job"]) == 0  # Hydra prints the composed config
    assert {"train": "task_name: train", "evaluate": "task_name: evaluate", "export": "checkpoint: ???"}[command] in capsys.readouterr().out
