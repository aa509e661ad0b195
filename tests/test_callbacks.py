"""compressml's ModelCheckpoint: last.ckpt holds the latest validation, whatever the monitor says."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint

from compressml.callbacks import ModelCheckpoint


class Worsening(pl.LightningModule):
    """A model whose validation loss gets worse every epoch, so only the first epoch is the best."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def loader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)

    def train_dataloader(self):
        return self.loader()

    def val_dataloader(self):
        return self.loader()


@pytest.mark.parametrize("check_val_every_n_epoch", [1, 2])
@pytest.mark.parametrize("callback_class", [ModelCheckpoint, LightningModelCheckpoint])
def test_last_checkpoint_is_the_latest_not_the_best(callback_class, check_val_every_n_epoch, tmp_path):
    callback = callback_class(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min", save_top_k=1, save_last=True)
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=check_val_every_n_epoch,
    )
    trainer.fit(Worsening())
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == 2 * check_val_every_n_epoch  # the first validation's
    # Lightning's own leaves last.ckpt at the best step: the reason for compressml's
    assert (last["global_step"] == trainer.global_step == 8) == (callback_class is ModelCheckpoint)
    assert list(last["callbacks"]) == list(best["callbacks"])  # the same state key as Lightning's
    assert next(iter(last["callbacks"])).startswith("ModelCheckpoint{")
