"""The LAE LightningModule without a Trainer: optimisation set-up and learning on a fixed batch."""

from __future__ import annotations

import pytest
import torch
from conftest import smooth_image

from compressml.errors import CheckpointError, ConfigError
from compressml.systems import LAESystem

G = {"_target_": "compressml.g.RateDistortion", "lmbda": 0.01}


def tiny_system(arch="mean_scale", **kwargs) -> LAESystem:
    torch.manual_seed(0)
    return LAESystem(net={"arch": arch, "channels": 8, "latent_channels": 8}, g=G, **kwargs)


def fixed_batch() -> torch.Tensor:
    imgs = [torch.from_numpy(smooth_image(64, 64, seed=s)).permute(2, 0, 1).float() / 255 for s in (1, 2)]
    return torch.stack(imgs)


def test_parameter_groups_are_disjoint_and_complete():
    system = tiny_system()
    main, aux = system._main_parameters(), system._aux_parameters()
    assert aux and main
    assert {id(p) for p in main}.isdisjoint({id(p) for p in aux})
    assert len(main) + len(aux) == len(list(system.net.parameters()))
    opt = system.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"main": 1e-4, "aux": 1e-3}


def test_main_loss_never_reaches_quantiles_and_aux_only_them():
    system = tiny_system()
    terms = system.compute_losses(fixed_batch())
    terms["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in system._aux_parameters())
    system.zero_grad()
    system.net.aux_loss().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in system._main_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in system._aux_parameters())


@pytest.mark.parametrize(
    "arch, options",
    [("factorized", {}), ("mean_scale", {}), ("mean_scale", {"quantization": "ste", "channels_last": True})],
)
def test_loss_falls_on_a_fixed_batch(arch, options):
    system = tiny_system(arch, optimizer={"_target_": "torch.optim.Adam", "lr": 3e-3}, **options)
    system.on_fit_start()
    assert system.net.g_a[0].weight.is_contiguous(memory_format=torch.channels_last) == options.get("channels_last", False)
    opt = system.configure_optimizers()["optimizer"]
    batch = fixed_batch()
    losses, psnrs = [], []
    for _ in range(40):
        terms = system.compute_losses(batch)
        opt.zero_grad()
        (terms["loss"] + terms["aux_loss"]).backward()
        system.configure_gradient_clipping(opt)
        opt.step()
        losses.append(terms["loss"].item())
        psnrs.append(terms["psnr"].item())
    assert min(losses[-5:]) < 0.6 * losses[0], losses
    assert max(psnrs[-5:]) > psnrs[0] + 3, psnrs


def test_clipping_touches_main_parameters_only():
    system = tiny_system(clip_max_norm=1e-3)
    terms = system.compute_losses(fixed_batch())
    (terms["loss"] + terms["aux_loss"]).backward()
    aux_before = [p.grad.clone() for p in system._aux_parameters()]
    system.configure_gradient_clipping(None)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in system._main_parameters() if p.grad is not None]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)
    assert all(torch.equal(a, p.grad) for a, p in zip(aux_before, system._aux_parameters()))


def test_ms_ssim_g_uses_ms_ssim_distortion():
    system = LAESystem(net={"arch": "factorized", "channels": 8, "latent_channels": 8}, g={**G, "distortion": "ms-ssim", "lmbda": 5})
    terms = system.compute_losses(fixed_batch())
    assert 0 <= terms["distortion"].item() <= 1


def test_user_g_callable_and_bad_specs():
    system = LAESystem(net={"arch": "factorized", "channels": 8, "latent_channels": 8}, g=lambda d, r, **c: -(d + r))
    assert torch.isfinite(system.compute_losses(fixed_batch())["loss"])
    with pytest.raises(ConfigError, match="cannot be imported"):
        LAESystem(net={"arch": "factorized"}, g={"_target_": "no.such.g"})
    with pytest.raises(ConfigError, match="bad arguments"):
        LAESystem(net={"arch": "factorized"}, g={"_target_": "compressml.g.RateDistortion", "nope": 1})
    with pytest.raises(CheckpointError):
        LAESystem(net={"arch": "factorized"}, g=G, family="red")


def test_init_from_copies_weights_and_refuses_other_models(tmp_path):
    from conftest import save_tiny_checkpoint

    from compressml.systems.loading import init_weights

    path = save_tiny_checkpoint(tmp_path / "a.ckpt", arch="mean_scale", seed=3)
    system = LAESystem(
        net={"arch": "mean_scale", "channels": 8, "latent_channels": 8}, g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.05}
    )
    init_weights(system, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in system.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert system.g.lmbda == 0.05  # this run's g, not the checkpoint's
    with pytest.raises(ConfigError, match="do not fit"):
        init_weights(tiny_system("hyperprior"), path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        init_weights(system, tmp_path / "missing.ckpt")


def test_bad_quantization_is_a_config_error():
    with pytest.raises(ConfigError, match="quantization"):
        tiny_system(quantization="round")


def test_compile_wraps_the_transforms_for_training_only_and_keeps_parameter_names():
    system = tiny_system(compile=True)
    names = list(system.state_dict())
    system.on_fit_start()
    transforms = [system.net.g_a, system.net.g_s, system.net.h_a, system.net.h_s]
    assert all(m._compiled_call_impl is not None for m in transforms)  # compiled lazily, at the first call
    assert list(system.state_dict()) == names  # checkpoints keep their keys
    system.on_fit_end()
    assert all(m._compiled_call_impl is None for m in transforms)  # coding runs the plain modules
    assert tiny_system().hparams.compile is False
