"""Distributed data parallel: trainer=ddp_sim (two CPU processes over gloo, launched as trainer=ddp
launches its GPU processes), the multiplier of constrained g's under DDP, multirun jobs.

This module is imported by the processes the tests start (the rank-state callback, the multiplier
workers), so its top level imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, TINY, run_cli

TESTS = Path(__file__).resolve().parent

# trainer=smoke's limits on top of trainer=ddp_sim, tiny model and crops; 2 of the 6 images
# validate (one per rank) and each rank trains on 3 batches of 2 crops
TINY_DDP = [
    "trainer=ddp_sim",
    "trainer.max_epochs=1",
    "+trainer.max_steps=3",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "+trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_model_summary=false",
    "logger=csv",
    "data=folder",
    "data.val_ratio=0.34",
    "data.repeat=3",
    *(t for t in TINY if t.startswith(("data.", "model."))),  # tiny crops, batch and model
    "g=rate_target",
]


def rank_state(out: str):
    """A callback (built from the config: ``+callbacks.rank_state._target_=test_ddp.rank_state``)
    that saves each rank's parameters, g multiplier and best validation when fitting ends."""
    import pytorch_lightning as pl

    class SaveRankState(pl.Callback):
        def on_fit_end(self, trainer, pl_module):
            Path(out).mkdir(parents=True, exist_ok=True)
            state = {
                "params": {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()},
                "buffers": {n: b.detach().cpu().clone() for n, b in pl_module.named_buffers()},  # CDF tables
                "multiplier": float(pl_module.g.multiplier),
                "best_val": dict(pl_module.best_val),
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
            }
            torch.save(state, Path(out) / f"rank{trainer.global_rank}.pt")

    return SaveRankState()


def run_ddp_train(tmp_path: Path, images: Path, monkeypatch, *extra: str, multirun: bool = False):
    monkeypatch.setenv("COMPRESSML_ROOT", str(tmp_path))  # logs/ under tmp_path, for every rank
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    overrides = [
        *TINY_DDP,
        f"data.root={images}",
        "+callbacks.rank_state._target_=test_ddp.rank_state",
        f"+callbacks.rank_state.out={tmp_path / 'ranks'}",
        *extra,
    ]
    result = run_cli(["train.py", *(["-m"] if multirun else []), *overrides], cwd=ROOT, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def load_rank_states(tmp_path: Path) -> list[dict]:
    files = sorted((tmp_path / "ranks").glob("rank*.pt"))
    assert [f.name for f in files] == ["rank0.pt", "rank1.pt"]
    return [torch.load(f, map_location="cpu", weights_only=True) for f in files]


def assert_one_job_folder(job: Path) -> None:
    """What one DDP job leaves in its folder: rank 0's files only (rank 1 adds nothing but its log)."""
    dirs = {p.name for p in job.iterdir() if p.is_dir()}
    assert dirs == {".hydra", "checkpoints", "csv"}, dirs
    assert {p.name for p in (job / "checkpoints").iterdir()} == {"epoch_000.ckpt", "last.ckpt"}
    assert [p.name for p in (job / "csv").iterdir()] == ["version_0"]  # no second logger directory
    logs = sorted(p.name for p in job.glob("*.log"))
    assert logs == ["train.log", "train_ddp_process_1.log"], logs


@pytest.mark.slow
def test_ddp_sim_trains_on_two_processes_and_writes_one_checkpoint(image_folder, tmp_path, monkeypatch):
    from compressml.cli import main
    from compressml.data import load_image
    from compressml.models import compress, decompress, forward_padded
    from compressml.systems import load_lae

    result = run_ddp_train(tmp_path, image_folder, monkeypatch)
    assert result.stdout.count("compressml training summary") == 1  # rank 0's table only

    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 ran in rank 0's run folder
    run = runs[0]
    assert_one_job_folder(run)
    assert len(list((tmp_path / "logs").rglob(".hydra"))) == 1

    # both ranks trained the same model in step: identical weights, multiplier and validation scores
    rank0, rank1 = load_rank_states(tmp_path)
    assert rank0["world_size"] == 2 and rank0["global_step"] == rank1["global_step"] == 3
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, p in rank0["params"].items():
        assert torch.equal(p, rank1["params"][name]), name
    assert any(n.endswith(".quantiles") for n in rank0["params"])  # the aux parameters are among them
    # the CDF tables were updated on both ranks (at validation and at each checkpoint), identically
    assert any(n.endswith("_quantized_cdf") and b.numel() for n, b in rank0["buffers"].items())
    for name, b in rank0["buffers"].items():
        assert torch.equal(b, rank1["buffers"][name]), name
    assert rank0["multiplier"] == rank1["multiplier"] != 1.0  # adapted, from the mean violation
    assert rank0["best_val"] == rank1["best_val"] and "val/loss" in rank0["best_val"]

    # the checkpoint holds those weights and that multiplier, and codes at once
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    for name, p in {**rank0["params"], **rank0["buffers"]}.items():
        assert torch.equal(ckpt["state_dict"][name], p), name
    assert ckpt["compressml"]["g_state"]["multiplier"] == rank0["multiplier"]
    assert ckpt["compressml"]["best_val"]["val/loss"] == pytest.approx(rank0["best_val"]["val/loss"])

    system = load_lae(last)
    x = load_image(image_folder / "img3.png")[None, :, :45, :71]
    with torch.no_grad():
        expected = forward_padded(system.net, x)["x_hat"].clamp(0, 1)
    decoded = decompress(system.net, compress(system.net, x))
    assert decoded.shape == x.shape
    assert torch.allclose(decoded, expected, atol=1e-4)

    src = image_folder / "img1.png"
    assert main(["compress", str(src), "-m", str(last), "-o", str(tmp_path / "a.cml")]) == 0
    assert main(["decompress", str(tmp_path / "a.cml"), "-m", str(last), "-o", str(tmp_path / "a.png")]) == 0
    assert load_image(tmp_path / "a.png").shape == load_image(src).shape


@pytest.mark.slow
def test_ddp_sim_in_a_multirun_job(image_folder, tmp_path, monkeypatch):
    # two jobs in one process: the second starts its own processes after the first one's clean-up
    run_ddp_train(tmp_path, image_folder, monkeypatch, "g.target_bpp=0.3,0.5", "hydra.callbacks.sweep_report.evaluate=false", multirun=True)
    logs = tmp_path / "logs" / "train"
    assert not (logs / "runs").exists()  # rank 1 ran the job in its folder, not a run of its own
    sweeps = list((logs / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = sorted((p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: p.name)
    assert [j.name for j in jobs] == ["0", "1"]  # rank 1 did not sweep again
    for job, target in zip(jobs, (0.3, 0.5)):
        assert_one_job_folder(job)
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["g"]["target_bpp"] == target  # the job's own override reached the ranks
    rank0, rank1 = load_rank_states(tmp_path)  # of the second job
    assert rank0["multiplier"] == rank1["multiplier"]


def test_multirun_job_children_run_that_job_in_its_folder(tmp_path, monkeypatch):
    """What Lightning's launcher would start for local rank 1 inside launch_context, in a multirun job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning_fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd
    from omegaconf import open_dict

    from compressml import distributed

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["g.lmbda=0.02", "data.batch_size=4"], return_hydra_config=True)
    job_dir = tmp_path / "multiruns" / "sweep" / "1"
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.overrides.task = ["g.lmbda=0.02", "data.batch_size=4"]
        cfg.hydra.overrides.hydra = [
            "hydra.mode=MULTIRUN",
            "hydra.sweep.dir=sweeps",
            "hydra/launcher=basic",
            "hydra.job.chdir=false",
        ]
    saved = HydraConfig.instance().cfg
    argv = ["train.py", "-m", "-cn", "train", "g.lmbda=0.01,0.02", "data.batch_size=4", "hydra.sweep.dir=sweeps"]
    monkeypatch.setattr(sys, "argv", list(argv))
    for key in distributed.LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    try:
        HydraConfig().set_config(cfg)
        run_dir = HydraConfig.get().run.dir
        assert run_dir != str(job_dir)  # what Lightning would use without launch_context
        with distributed.launch_context(trainer=None):
            command, cwd = _hydra_subprocess_cmd(local_rank=1)
            os.environ.update(LOCAL_RANK="0", MASTER_PORT="12910", WORLD_SIZE="2")  # as the launcher does
        # [python, script] under pytest, [python, -m, module] under python -m pytest
        assert command[command.index("-cn") :] == [
            "-cn",
            "train",
            "g.lmbda=0.02",
            "data.batch_size=4",
            "hydra.job.chdir=false",
            "hydra.mode=RUN",
            f'hydra.run.dir="{job_dir}"',
            "hydra.job.name=train_ddp_process_1",
            "hydra.output_subdir=null",
        ]
        assert cwd == str(tmp_path)
        # restored: the next job of this process launches its own processes, on a new port
        assert sys.argv == argv and HydraConfig.get().run.dir == run_dir
        assert not any(key in os.environ for key in distributed.LAUNCH_ENV)
    finally:
        HydraConfig.instance().cfg = saved


def test_child_arguments_keep_config_flags_and_drop_the_sweep():
    from compressml.distributed import child_arguments

    args = child_arguments(
        ["--multirun", "--config-name=train", "--config-dir", "/x", "a=1,2", "hydra/launcher=slurm"],
        ["a=2", "+b=[1,2]"],
        ["hydra.mode=MULTIRUN", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "++hydra.job.env_set.X=1"],
    )
    assert args == ["--config-name=train", "--config-dir", "/x", "a=2", "+b=[1,2]", "++hydra.job.env_set.X=1", "hydra.mode=RUN"]


def test_outside_a_multirun_launch_context_changes_nothing(monkeypatch):
    from compressml import distributed

    monkeypatch.setattr(sys, "argv", ["train.py", "a=1"])
    monkeypatch.setattr(distributed, "multirun_job_config", lambda: None)
    with distributed.launch_context(trainer=None):
        assert sys.argv == ["train.py", "a=1"]
        monkeypatch.setenv("LOCAL_RANK", "0")
    assert os.environ["LOCAL_RANK"] == "0"  # a single run keeps what the launcher set (it ends with the job)


def test_slurm_tasks_are_not_launched_again(monkeypatch):
    """Under SLURM the tasks are the ranks: trainer=ddp_sim then starts no process of its own."""
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from pytorch_lightning.utilities import rank_zero_only

    from compressml.training import compose, instantiate

    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    cfg = compose(["trainer=ddp_sim", "logger=none", "callbacks=none"], "/nonexistent")
    rank = rank_zero_only.rank  # the trainer sets it (one object for Lightning and Fabric)
    try:
        trainer = instantiate(cfg.trainer, "trainer")
        env = trainer.strategy.cluster_environment
        assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
        assert trainer.global_rank == 1 and trainer.world_size == 2
    finally:
        rank_zero_only.rank = rank


def _multiplier_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from compressml.g import RateTarget

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        g = RateTarget(target_bpp=0.5, multiplier=1.0, step_size=0.1)
        distortion = torch.tensor(1e-3)
        # violations rate / 0.5 - 1: rank 0 +1.0, rank 1 0.0; then +0.2 and -0.6
        g(distortion, torch.tensor([1.0, 0.5][rank]), training=True)
        after_one = g.multiplier
        g(distortion, torch.tensor([0.6, 0.2][rank]), training=True)
        g(distortion, torch.tensor([5.0, 0.0][rank]), training=False)  # validation: no collective, no change
        Path(out_dir, f"{rank}.json").write_text(json.dumps([after_one, g.multiplier]))
    finally:
        dist.destroy_process_group()


def test_multiplier_adapts_from_the_mean_violation_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_multiplier_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]  # every rank holds the same multiplier
    after_one, after_two = results[0]
    assert after_one == pytest.approx(1.0 + 0.1 * 0.5)  # mean violation (1.0 + 0.0) / 2
    assert after_two == pytest.approx(after_one + 0.1 * -0.2)  # mean (0.2 - 0.6) / 2


def _mllae_inputs(rank: int, step: int) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(10 * rank + step))


def _code_counts_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from compressml.models.mllae import MLLAE

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = MLLAE(bytes=16, block=16, channels=8)
        ddp = DistributedDataParallel(net)  # broadcast_buffers: rank 0's buffers reach every rank each step
        for step in range(2):
            ddp(_mllae_inputs(rank, step))["x_hat"].mean().backward()
        net.fold_counts()
        net.fold_counts()  # nothing pending: no change
        torch.save(net.code_counts, Path(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_mllae_code_counts_come_from_every_rank(tmp_path):
    """The rANS prior of MLLAE codes counts the codes of all ranks (not rank 0's alone), identically."""
    import torch.multiprocessing as mp

    from compressml.models.mllae import MLLAE

    mp.spawn(_code_counts_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    counts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    alone = MLLAE(bytes=16, block=16, channels=8)
    for rank in range(2):
        for step in range(2):
            alone(_mllae_inputs(rank, step))
    assert alone.code_counts.sum() == 2 * 2 * 2 * 4 * alone.geometry.elements  # ranks x steps x images x blocks
    assert torch.equal(counts[0], counts[1]) and torch.equal(counts[0], alone.code_counts)


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("arch", ["factorized", "hyperprior", "mean_scale"])
def test_every_parameter_takes_part_in_a_ddp_step(arch, one_process_group):
    """DDP without find_unused_parameters (trainer=ddp) needs every parameter in the loss a training
    step returns, the entropy bottleneck's quantiles (aux loss) included: so their gradients are
    all-reduced like the others'. A second step fails if one was left out of the first."""
    from torch.nn.parallel import DistributedDataParallel

    from compressml.systems import LAESystem

    torch.manual_seed(0)
    system = LAESystem(
        net={"arch": arch, "channels": 8, "latent_channels": 8}, g={"_target_": "compressml.g.RateTarget", "target_bpp": 0.5}
    )

    class Step(torch.nn.Module):  # what Lightning's DDP wrapper runs: the loss training_step returns
        def __init__(self):
            super().__init__()
            self.system = system

        def forward(self, x):
            terms = self.system.compute_losses(x)
            return terms["loss"] + terms["aux_loss"]

    ddp = DistributedDataParallel(Step(), find_unused_parameters=False)
    for _ in range(2):
        ddp.zero_grad()
        ddp(torch.rand(2, 3, 64, 64)).backward()
    missing = [n for n, p in system.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in system.named_parameters() if n.endswith(".quantiles"))
