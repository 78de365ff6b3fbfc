"""Image-file datasets: any folder of class subfolders (`imagefolder`) and ImageNet (`imagenet`).

Layouts: root/train/<class>/*.jpg + root/val/<class>/*.jpg, or (imagefolder only) root/<class>/*.jpg split
per class into train/val by `split_fraction` with a fixed seed. Files are listed with torchvision's
ImageFolder rules (extensions, sorted class folders -> labels 0..K-1); directory checks run at construction,
the (possibly long) file scan on first use.
"""

import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, make_dataset

from ..core.schema import key
from . import transforms
from .config import DataConfig
from .source import DataSource


def load_image(path: str) -> Image.Image:
    """PIL RGB image; any decoding failure is re-raised as ValueError naming the file."""
    try:
        return default_loader(path)
    except Exception as e:
        raise ValueError(f"cannot load image file {path}: {type(e).__name__}: {e}") from e


class ImageFiles(torch.utils.data.Dataset):
    """(path, label) samples + a transform; the listing is shared between views with different transforms."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform=None):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        img = load_image(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def class_dirs(folder: Path, where: str) -> list[str]:
    """Sorted class subfolder names, after checking the folder exists and has some; errors start with `where`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: folder {folder} does not exist" if not folder.exists()
                                else f"{where}: {folder} is a file, expected a folder of class subfolders")
    entries = sorted(folder.iterdir())
    if not entries:
        raise FileNotFoundError(f"{where}: folder {folder} is empty; expected one subfolder per class")
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        raise FileNotFoundError(f"{where}: folder {folder} has no class subfolders (it holds only "
                                f"{entries[0].name!r}{' and more' if len(entries) > 1 else ''}); "
                                "expected <class>/<image> files")
    return classes


def scan(folder: Path, classes: list[str], where: str) -> list[tuple[str, int]]:
    """(path, label) of every image under folder/<class>/, labels indexing `classes` (torchvision's rules)."""
    try:
        return make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}: {e}") from e


def stratified_split(samples: list[tuple[str, int]], fraction: float, seed: int):
    """Per class, a seeded shuffle puts round(fraction * n) files in train (at least one in each split)."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        random.Random(f"{seed}-{label}").shuffle(items)
        k = min(max(round(fraction * len(items)), 1), len(items) - 1) if len(items) > 1 else 1
        train += items[:k]
        val += items[k:]
    return sorted(train, key=lambda s: (s[1], s[0])), sorted(val, key=lambda s: (s[1], s[0]))


@dataclass
class ImageNetConfig(DataConfig):
    root: Any = key("the folder holding train/ and val/", str,
                    allowed="the path of the dataset's folder, e.g. data.root=/datasets/<name>")


@dataclass
class ImageFolderConfig(ImageNetConfig):
    split_fraction: Any = key("training fraction of each class of root/<class>/", float, gt=0, lt=1,
                              null="use root/train and root/val", optional=True)
    split_seed: Any = key("seed of that split", int, ge=0, optional=True)


class ImageFolderSource(DataSource):
    """root/{train,val}/<class>/ or, with split_fraction, root/<class>/ split deterministically."""
    Config = ImageFolderConfig
    allow_split = True

    def __init__(self, c: dict):
        self.name, self._c = c["name"], c
        root = Path(str(c["root"])).expanduser()
        where = f"data.root={str(c['root'])!r}"
        self.root, self._where = root, where
        class_dirs(root, where)  # root exists and is not empty
        has_split = (root / "train").is_dir() and (root / "val").is_dir()
        if has_split:
            self.class_names = class_dirs(root / "train", where)
            val_classes = class_dirs(root / "val", where)
            if val_classes != self.class_names:
                diff = sorted(set(val_classes) ^ set(self.class_names))
                raise ValueError(f"{where}: train/ and val/ have different class folders "
                                 f"(not in both: {diff[:10]})")
        elif not self.allow_split:
            raise FileNotFoundError(f"{where}: expected root/train/<class>/ and "
                                    f"root/val/<class>/ (the ImageNet layout)")
        elif c.get("split_fraction") is None:
            raise ValueError(f"{where} has no train/ and val/ subfolders, so data.split_fraction "
                             "must be set (0 < f < 1: the training fraction of each class folder)")
        else:
            self.class_names = class_dirs(root, where)
        self._has_split = has_split
        n = len(self.class_names)
        if n < 2:
            raise ValueError(f"{where}: {root} has {n} class folder ({self.class_names[0]!r}); classification "
                             "needs at least 2 class subfolders")
        if c["num_classes"] is not None and c["num_classes"] != n:
            raise ValueError(f"data.num_classes={c['num_classes']} but {root} has {n} class folders; "
                             "set num_classes to null to infer it")
        self.num_classes = n
        self.native_resolution, self.half_resolution = c["native_resolution"], c["half_resolution"]
        self.mean = c["mean"] or IMAGENET_DEFAULT_MEAN
        self.std = c["std"] or IMAGENET_DEFAULT_STD
        self.verify_images = c["verify_images"]
        self._splits = None
        self._lock = threading.Lock()

    @property
    def splits(self) -> dict[str, list[tuple[str, int]]]:
        """{"train": samples, "val": samples}; scanned once, on first use."""
        with self._lock:
            if self._splits is None:
                if self._has_split:
                    self._splits = {split: scan(self.root / split, self.class_names, self._where)
                                    for split in ("train", "val")}
                else:
                    c = self._c
                    train, val = stratified_split(scan(self.root, self.class_names, self._where),
                                                  c["split_fraction"], c["split_seed"])
                    self._splits = {"train": train, "val": val}
            return self._splits

    @property
    def num_files(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def train_dataset(self, resolution: int, eval_transform: bool = False) -> ImageFiles:
        return ImageFiles(self.splits["train"], self.class_names, self._transform(resolution, not eval_transform))

    def val_dataset(self, resolution: int) -> ImageFiles:
        return ImageFiles(self.splits["val"], self.class_names, self._transform(resolution, False))

    def _transform(self, resolution: int, train: bool):
        return transforms.for_config(self._c, self._check_resolution(resolution), train)

    def verify(self) -> None:
        for split in ("train", "val"):
            for path, _ in self.splits[split]:
                try:
                    with Image.open(path) as im:
                        im.verify()
                except Exception as e:
                    raise ValueError(f"corrupt or unreadable image file {path} ({split} split): "
                                     f"{type(e).__name__}: {e}") from e


class ImageNetSource(ImageFolderSource):
    """ImageNet: root/train/<wnid>/ and root/val/<wnid>/ only."""
    Config = ImageNetConfig
    allow_split = False
