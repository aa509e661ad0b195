"""conf/experiment/compressai/<variant>.yaml: CompressAI's training ladder for every architecture of
the registry, as one multirun (the sweep over ladder.quality), each job with CompressAI's lambda and widths."""

from __future__ import annotations

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from compressml.models.lae import build_lae, variants

MSE = {"q1": 0.0018, "q2": 0.0035, "q3": 0.0067, "q4": 0.0130, "q5": 0.0250, "q6": 0.0483, "q7": 0.0932, "q8": 0.1800}
MS_SSIM = {"q1": 2.40, "q3": 8.73, "q6": 60.50}


def recipe(variant: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", [f"experiment=compressai/{variant}", "data.root=/data/images", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("spec", variants(), ids=[v.variant for v in variants()])
def test_every_architecture_has_its_ladder_as_one_multirun(spec):
    cfg = recipe(spec.variant)
    qualities = str(cfg.hydra.sweeper.params["ladder.quality"]).split(",")
    assert qualities[0] == "q1" and len(qualities) in (6, 8)  # cheng2020 was published at six qualities
    assert cfg.model.net.arch == spec.name
    for q in (qualities[0], qualities[-1]):
        job = recipe(spec.variant, f"ladder.quality={q}")
        assert job.g.lmbda == MSE[q] and job.g.distortion == "mse"
        net = OmegaConf.to_container(job.model.net, resolve=True)
        assert net["channels"] in (128, 192)
        if q == "q1":
            build_lae(**net)  # the widths build the architecture
    job = recipe(spec.variant, "ladder.quality=q3", "ladder.metric=ms-ssim")
    assert job.g.lmbda == MS_SSIM["q3"] and job.g.distortion == "ms-ssim"
    assert job.data.crop_size == 256 and job.data.batch_size == 16 and job.model.optimizer.lr == 1e-4
