"""Lightning DataModules: the bundled sample photos, any image folder, and Kodak.

All of them share :class:`ImageDataModule`: a list of training items and a list of
validation items (file paths or in-memory arrays), random crops with flips for
training, fixed centre crops for validation, and the full images as the test set.
Unreadable files are found while setting up (every file is decoded once), skipped
with a warning and counted in :attr:`ImageDataModule.skipped`, so a bad file never
stops an epoch half-way.
"""

from __future__ import annotations

import abc
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from compressml.data.images import array_to_tensor, list_images, load_image
from compressml.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    """One image: a file on disk, or an array already in memory (the bundled samples)."""

    name: str
    path: Path | None = None
    array: np.ndarray | None = None
    # the decoded image kept in memory (data.cache): uint8 (3, H, W) for 8-bit images
    cached: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def load(self) -> torch.Tensor:
        if self.cached is not None:
            return to_float(self.cached)
        return load_image(self.path) if self.path is not None else array_to_tensor(self.array)

    def load_raw(self) -> torch.Tensor:
        """The cached tensor as kept (uint8 for 8-bit images: crop it before :func:`to_float`),
        else :meth:`load`."""
        return self.cached if self.cached is not None else self.load()

    def with_cache(self) -> ImageItem:
        """This item with its decoded pixels kept in memory, as uint8 whenever that is exact."""
        x = self.load()
        as_bytes = (x * 255).round_().to(torch.uint8)
        exact = torch.equal(as_bytes.float().div_(255), x)
        return replace(self, cached=as_bytes if exact else x)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A cached image (uint8 or float) as float in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def fit_crop(x: torch.Tensor, size: int | None, rng: random.Random | None = None) -> torch.Tensor:
    """Crop ``x`` (C, H, W) to ``size``x``size``: random if ``rng`` is given, else centred.

    Images smaller than the crop are first padded by repeating their edge pixels.
    ``size=None`` returns the image unchanged.
    """
    if size is None:
        return x
    _, h, w = x.shape
    if h < size or w < size:
        ph, pw = max(size - h, 0), max(size - w, 0)
        x = F.pad(x[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")[0]
        _, h, w = x.shape
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    return x[:, top : top + size, left : left + size]


class ImageDataset(Dataset):
    """Images cropped for training (random crop + horizontal flip) or validation (centre crop)."""

    def __init__(self, items: Sequence[ImageItem], crop_size: int | None, train: bool, repeat: int = 1, pair_scale: int | None = None):
        if not items:
            raise DataError("no images to build a dataset from")
        self.pair_scale = pair_scale
        self.items = list(items)
        self.crop_size = crop_size
        self.train = train
        self.repeat = max(1, int(repeat))

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def _load(self, index: int) -> torch.Tensor:
        """The image at ``index``: float in [0, 1], or uint8 when cached so (see ``to_float``)."""
        # Files were all decoded once at set-up; should one change on disk since,
        # warn and fall back to the next readable image rather than end the epoch.
        for offset in range(len(self.items)):
            item = self.items[(index + offset) % len(self.items)]
            try:
                return item.load_raw()
            except DataError as e:
                log.warning("skipping unreadable image: %s", e)
        raise DataError("every image of the dataset became unreadable")

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self._load(index % len(self.items))
        if self.crop_size is not None and min(x.shape[-2:]) < self.crop_size:
            x = to_float(x)  # padded in float (replicate padding)
        if not self.train:
            return self._pair(to_float(fit_crop(x, self.crop_size)))
        rng = random.Random(torch.randint(0, 2**31, ()).item())
        x = to_float(fit_crop(x, self.crop_size, rng))
        if rng.random() < 0.5:
            x = x.flip(-1)
        return self._pair(x)

    def _pair(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The image, or with ``pair_scale`` a super-resolution pair: (antialiased bicubic low-res,
        high-res cropped to a multiple of the scale)."""
        if not self.pair_scale:
            return x
        from compressml.models.red import make_pair

        try:
            lr, hr = make_pair(x[None], self.pair_scale)
        except ValueError as e:
            raise DataError(f"a training crop: {e}") from None
        return lr[0], hr[0]


class ImageDataModule(pl.LightningDataModule, abc.ABC):
    """Shared behaviour; subclasses only say which items are for training and which for validation."""

    def __init__(
        self,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        crop_size: int = 256,
        val_crop_size: int | None = 256,
        num_workers: int = 0,
        repeat: int = 1,
        verify: bool = True,
        pin_memory: bool = False,
        cache: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if crop_size is not None and crop_size < 1:
            raise ConfigError(f"data.crop_size must be >= 1, got {crop_size}")
        if val_crop_size is not None and val_crop_size < 1:
            raise ConfigError(f"data.val_crop_size must be >= 1 (or null for full images), got {val_crop_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        if val_crop_size is None:
            self.val_batch_size = 1  # full images differ in size
        self.crop_size = crop_size
        self.val_crop_size = val_crop_size
        self.num_workers = num_workers
        self.repeat = repeat
        # set by a super-resolution model (REDSystem.adapt_datamodule): batches become (low-res, high-res)
        self.pair_scale: int | None = None
        self.verify = verify
        self.pin_memory = pin_memory
        self.cache = cache
        self.skipped: list[tuple[str, str]] = []
        self._verified: set[str] = set()
        self.train_items: list[ImageItem] = []
        self.val_items: list[ImageItem] = []
        self._ready = False

    # -- what subclasses provide ------------------------------------------------
    @abc.abstractmethod
    def collect(self) -> tuple[list[ImageItem], list[ImageItem]]:
        """(training items, validation items)."""

    @property
    def description(self) -> str:
        return type(self).__name__

    # -- Lightning hooks ------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        train, val = self.collect()
        # caching decodes every image anyway, which verifies it
        keep = self._cached if self.cache else self._readable
        self.train_items, self.val_items = keep(train), keep(val)
        if stage in (None, "fit") and not self.train_items:
            raise DataError(f"{self.description}: no readable training images")
        if stage in (None, "fit", "validate") and not self.val_items:
            raise DataError(f"{self.description}: no readable validation images")
        if stage in ("test", "predict") and not (self.val_items or self.train_items):
            raise DataError(f"{self.description}: no readable images")
        log.info(
            "%s: %d training and %d validation images (%d skipped)",
            self.description,
            len(self.train_items),
            len(self.val_items),
            len(self.skipped),
        )
        self._ready = True

    def _readable(self, items: list[ImageItem]) -> list[ImageItem]:
        if not self.verify:
            return items
        kept = []
        for item in items:
            if item.name in self._verified:
                kept.append(item)
                continue
            try:
                item.load()
            except DataError as e:
                log.warning("skipping unreadable image: %s", e)
                self.skipped.append((item.name, str(e)))
            else:
                self._verified.add(item.name)
                kept.append(item)
        return kept

    def _cached(self, items: list[ImageItem]) -> list[ImageItem]:
        """Decode every image once and keep it in memory (unreadable ones are skipped)."""
        kept = []
        for item in items:
            try:
                kept.append(item.with_cache())
            except DataError as e:
                log.warning("skipping unreadable image: %s", e)
                self.skipped.append((item.name, str(e)))
        return kept

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        ds = ImageDataset(self.train_items, self.crop_size, train=True, repeat=self.repeat, pair_scale=self.pair_scale)
        return self._loader(ds, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        ds = ImageDataset(self.val_items, self.val_crop_size, train=False, pair_scale=self.pair_scale)
        return self._loader(ds, self.val_batch_size, shuffle=False)

    @property
    def evaluation_items(self) -> list[ImageItem]:
        """The held-out images (all images for evaluation-only sets), after :meth:`setup`."""
        return self.val_items or self.train_items

    def test_dataloader(self) -> DataLoader:
        """Full-size held-out images, one per batch (evaluation)."""
        ds = ImageDataset(self.evaluation_items, None, train=False)
        return self._loader(ds, 1, shuffle=False)


# The colour photographs shipped inside scikit-image (no network needed).
SAMPLE_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
    "rocket",
)


def load_sample(name: str) -> np.ndarray:
    """One bundled scikit-image colour photo as a uint8 (H, W, 3) array."""
    import skimage.data

    if name not in SAMPLE_IMAGES:
        raise ConfigError(f"unknown sample image {name!r}; choose from {', '.join(SAMPLE_IMAGES)}")
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


class SampleImagesDataModule(ImageDataModule):
    """The colour photos bundled with scikit-image; ``val_images`` are held out for validation."""

    def __init__(self, val_images: Sequence[str] = ("coffee", "rocket"), **kwargs):
        super().__init__(**kwargs)
        unknown = [n for n in val_images if n not in SAMPLE_IMAGES]
        if unknown:
            raise ConfigError(f"unknown sample image(s) {unknown}; choose from {', '.join(SAMPLE_IMAGES)}")
        self.val_images = list(val_images)

    @property
    def description(self) -> str:
        return "scikit-image sample photos"

    def collect(self):
        items = [ImageItem(name, array=load_sample(name)) for name in SAMPLE_IMAGES]
        train = [it for it in items if it.name not in self.val_images]
        val = [it for it in items if it.name in self.val_images]
        return train, val


_TRAIN_DIRS = ("train", "training")
_VAL_DIRS = ("val", "valid", "validation")


def split_by_ratio(paths: Sequence[Path], val_ratio: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic shuffle-and-split; at least one validation image when ``val_ratio > 0``."""
    paths = sorted(paths)
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(paths) * val_ratio))
    if val_ratio > 0 and len(paths) >= 2:
        n_val = min(max(n_val, 1), len(paths) - 1)
    val_idx = set(order[:n_val])
    train = [p for i, p in enumerate(paths) if i not in val_idx]
    val = [p for i, p in enumerate(paths) if i in val_idx]
    return train, val


class ImageFolderDataModule(ImageDataModule):
    """Any directory of images, searched recursively.

    ``split="auto"`` uses ``train/`` and ``val/`` (or ``valid/``, ``validation/``)
    subfolders when both exist and otherwise splits by ``val_ratio``; ``split="ratio"``
    and ``split="subfolders"`` force one or the other.
    """

    def __init__(self, root: str | Path, split: str = "auto", val_ratio: float = 0.1, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if root is None or str(root) == "":
            raise ConfigError("data.root is required: point it at a folder of images (data.root=/path/to/images)")
        if split not in ("auto", "ratio", "subfolders"):
            raise ConfigError(f"data.split must be auto, ratio or subfolders, got {split!r}")
        if not 0.0 <= val_ratio < 1.0:
            raise ConfigError(f"data.val_ratio must be in [0, 1), got {val_ratio}")
        self.root = Path(root).expanduser()
        self.split = split
        self.val_ratio = val_ratio
        self.seed = seed

    @property
    def description(self) -> str:
        return f"image folder {self.root}"

    def _subfolders(self) -> tuple[Path, Path] | None:
        train = next((self.root / d for d in _TRAIN_DIRS if (self.root / d).is_dir()), None)
        val = next((self.root / d for d in _VAL_DIRS if (self.root / d).is_dir()), None)
        return (train, val) if train and val else None

    def collect(self):
        if not self.root.is_dir():
            raise DataError(f"data.root: no such directory: {self.root}")
        subfolders = self._subfolders() if self.split != "ratio" else None
        if self.split == "subfolders" and subfolders is None:
            raise DataError(f"{self.root}: split=subfolders needs train/ and val/ subfolders")
        if subfolders:
            train_paths, val_paths = list_images(subfolders[0]), list_images(subfolders[1])
        else:
            all_paths = list_images(self.root)
            if not all_paths:
                raise DataError(f"{self.root}: no images found (looked recursively for png, jpg, bmp, tiff, webp, ppm)")
            # drop unreadable files before splitting, so the split is over usable images
            readable = {i.path for i in self._readable(self._items(all_paths))}
            usable = [p for p in all_paths if p in readable]
            if self.val_ratio > 0 and len(usable) == 1:
                raise DataError(f"{self.root}: one readable image cannot be split; add images or use train/ and val/ subfolders")
            train_paths, val_paths = split_by_ratio(usable, self.val_ratio, self.seed)
        return self._items(train_paths), self._items(val_paths)

    def _items(self, paths) -> list[ImageItem]:
        return [ImageItem(str(p.relative_to(self.root)), path=p) for p in paths]


class KodakDataModule(ImageFolderDataModule):
    """The 24 Kodak images: an evaluation set only (validation / test), never for training."""

    def __init__(self, root: str | Path, download: bool = False, **kwargs):
        kwargs.setdefault("val_crop_size", None)
        super().__init__(root=root, split="ratio", val_ratio=0.0, **kwargs)
        self.download = download

    @property
    def description(self) -> str:
        return f"Kodak ({self.root})"

    def prepare_data(self) -> None:
        if self.download:
            from compressml.data.kodak import download_kodak

            download_kodak(self.root)

    def collect(self):
        if self.download:
            self.prepare_data()
        if not self.root.is_dir():
            raise DataError(f"Kodak folder {self.root} does not exist: set data.root, or data.download=true to fetch it")
        paths = list_images(self.root)
        if not paths:
            raise DataError(f"{self.root}: no Kodak images found")
        return [], [ImageItem(p.name, path=p) for p in paths]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            raise DataError("data=kodak is an evaluation set: train with data=samples or data=folder, and evaluate on Kodak")
        super().setup(stage)
