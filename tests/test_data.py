"""Image reading, conversions, folder discovery and splits, corrupt-file handling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from compressml.data import ImageFolderDataModule, KodakDataModule, SampleImagesDataModule, fit_crop, list_images, load_image
from compressml.errors import ConfigError, DataError


def test_list_images_is_recursive_and_filters(image_folder):
    (image_folder / "notes.txt").write_text("not an image")
    (image_folder / ".hidden").mkdir()
    Image.fromarray(smooth_image(8, 8)).save(image_folder / ".hidden" / "x.png")
    Image.fromarray(smooth_image(8, 8)).save(image_folder / "UPPER.JPG")
    names = [p.relative_to(image_folder).as_posix() for p in list_images(image_folder)]
    assert "nested/img4.png" in names and "UPPER.JPG" in names
    assert "notes.txt" not in names and not any(n.startswith(".hidden") for n in names)
    assert len(names) == 7


def test_rgb_png_loads_exactly(tmp_path):
    arr = smooth_image(17, 23)
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 17, 23) and x.dtype == torch.float32
    assert torch.equal((x * 255).round().byte().permute(1, 2, 0), torch.from_numpy(arr))


def test_greyscale_is_replicated(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert x[0, 7, 7].item() == pytest.approx(grey[7, 7] / 255)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 4, 5)
    assert x[0].unique().tolist() == [pytest.approx(200 / 255)]
    assert x[1].abs().max() == 0


def test_16bit_is_scaled_not_truncated(tmp_path):
    deep = np.array([[0, 257, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    x = load_image(tmp_path / "d.png")
    assert x.shape == (3, 1, 4)
    assert x[0, 0].tolist() == pytest.approx([0.0, 257 / 65535, 1.0, 1000 / 65535], abs=1e-6)


def test_palette_image_converts(tmp_path):
    Image.fromarray(smooth_image(9, 9)).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 9, 9)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"hello"])
def test_corrupt_files_raise_data_error(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_truncated_file_raises_data_error(tmp_path):
    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        load_image(tmp_path / "t.png")


def test_fit_crop_pads_small_images_and_crops_large():
    small = torch.rand(3, 5, 7)
    out = fit_crop(small, 16)
    assert out.shape == (3, 16, 16)
    assert torch.equal(out[:, 5, 4], small[:, 0, 0])  # edge pixels repeated, image centred
    big = torch.rand(3, 40, 50)
    assert torch.equal(fit_crop(big, 10), big[:, 15:25, 20:30])
    assert fit_crop(big, None) is big


def test_folder_split_by_ratio_is_deterministic_and_disjoint(image_folder):
    dm = ImageFolderDataModule(image_folder, val_ratio=0.34, crop_size=32, batch_size=2)
    dm.setup("fit")
    train, val = {i.name for i in dm.train_items}, {i.name for i in dm.val_items}
    assert len(train) == 4 and len(val) == 2 and not train & val
    dm2 = ImageFolderDataModule(image_folder, val_ratio=0.34, crop_size=32, batch_size=2)
    dm2.setup("fit")
    assert {i.name for i in dm2.val_items} == val
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1


def test_folder_split_by_subfolders(tmp_path):
    for sub, n in (("train", 3), ("val", 2)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(20, 20, i)).save(tmp_path / sub / f"{i}.png")
    dm = ImageFolderDataModule(tmp_path, crop_size=16, batch_size=1)
    dm.setup("fit")
    assert len(dm.train_items) == 3 and len(dm.val_items) == 2
    assert all(i.name.startswith("train/") for i in dm.train_items)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    dm = ImageFolderDataModule(tmp_path / "empty")
    with pytest.raises(DataError, match="no images found"):
        dm.setup("fit")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        ImageFolderDataModule(tmp_path / "nope").setup("fit")


def test_corrupt_files_are_skipped_and_counted(image_folder, caplog):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (image_folder / "nested" / "empty.jpg").write_bytes(b"")
    dm = ImageFolderDataModule(image_folder, val_ratio=0.2, crop_size=32, batch_size=8)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert sorted(name for name, _ in dm.skipped) == ["broken.png", "nested/empty.jpg"]
    assert "skipping unreadable image" in caplog.text
    names = {i.name for i in dm.train_items + dm.val_items}
    assert len(names) == 6 and "broken.png" not in names
    for batch in dm.train_dataloader():  # a whole epoch, no crash
        assert batch.shape[1:] == (3, 32, 32)


def test_folder_with_only_corrupt_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"junk")
    dm = ImageFolderDataModule(tmp_path)
    with pytest.raises(DataError, match="no readable"):
        dm.setup("fit")
    assert len(dm.skipped) == 2


def test_bad_data_options():
    with pytest.raises(ConfigError, match="val_ratio"):
        ImageFolderDataModule("/tmp", val_ratio=1.5)
    with pytest.raises(ConfigError, match="split"):
        ImageFolderDataModule("/tmp", split="nope")
    with pytest.raises(ConfigError, match="batch_size"):
        ImageFolderDataModule("/tmp", batch_size=0)
    with pytest.raises(ConfigError, match="unknown sample"):
        SampleImagesDataModule(val_images=["nope"])


def test_samples_hold_out_validation_images():
    dm = SampleImagesDataModule(val_images=["coffee"], crop_size=48, val_crop_size=64, batch_size=3)
    dm.setup("fit")
    assert [i.name for i in dm.val_items] == ["coffee"]
    assert "coffee" not in {i.name for i in dm.train_items} and len(dm.train_items) == 8
    assert next(iter(dm.train_dataloader())).shape == (3, 3, 48, 48)
    assert next(iter(dm.val_dataloader())).shape == (1, 3, 64, 64)


def test_kodak_is_evaluation_only(tmp_path):
    for i in range(2):
        Image.fromarray(smooth_image(24, 32, i)).save(tmp_path / f"kodim{i:02d}.png")
    dm = KodakDataModule(tmp_path)
    with pytest.raises(DataError, match="evaluation set"):
        dm.setup("fit")
    dm.setup("test")
    shapes = [b.shape for b in dm.test_dataloader()]
    assert shapes == [(1, 3, 24, 32)] * 2  # full images, no crop


def test_split_happens_after_dropping_unreadable_files(tmp_path):
    Image.fromarray(smooth_image(20, 20)).save(tmp_path / "a.png")
    Image.fromarray(smooth_image(20, 20, 1)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"junk")
    dm = ImageFolderDataModule(tmp_path, val_ratio=0.5, crop_size=16, batch_size=1)
    dm.setup("fit")
    assert len(dm.train_items) == 1 and len(dm.val_items) == 1 and len(dm.skipped) == 1


def test_single_image_folder_says_why(tmp_path):
    Image.fromarray(smooth_image(20, 20)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="cannot be split"):
        ImageFolderDataModule(tmp_path).setup("fit")


def test_cache_keeps_images_in_memory_and_gives_the_same_crops(image_folder, tmp_path):
    plain = ImageFolderDataModule(image_folder, val_ratio=0.2, crop_size=32, val_crop_size=48, batch_size=4)
    cached = ImageFolderDataModule(image_folder, val_ratio=0.2, crop_size=32, val_crop_size=48, batch_size=4, cache=True)
    plain.setup("fit")
    cached.setup("fit")
    assert all(item.cached is not None and item.cached.dtype == torch.uint8 for item in cached.train_items)
    for item, same in zip(plain.train_items, cached.train_items):
        assert torch.equal(item.load(), same.load())
    for a, b in [(plain.train_dataloader(), cached.train_dataloader()), (plain.val_dataloader(), cached.val_dataloader())]:
        torch.manual_seed(3)
        first = [batch for batch in a]
        torch.manual_seed(3)
        second = [batch for batch in b]
        assert all(torch.equal(p, c) for p, c in zip(first, second))
        assert first[0].dtype == second[0].dtype == torch.float32
    # 16-bit images are kept in float (uint8 would lose precision); small ones are padded
    deep = tmp_path / "deep"
    deep.mkdir()
    for i in range(2):
        Image.fromarray(np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 97 + i).save(deep / f"d{i}.png")
    dm = ImageFolderDataModule(deep, val_ratio=0.5, crop_size=32, batch_size=1, cache=True)
    dm.setup("fit")
    assert dm.train_items[0].cached.dtype == torch.float32
    assert torch.equal(dm.train_items[0].load(), load_image(dm.train_items[0].path))
    assert next(iter(dm.train_dataloader())).shape == (1, 3, 32, 32)
