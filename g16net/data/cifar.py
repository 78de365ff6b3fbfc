"""CIFAR-10 / CIFAR-100 through torchvision, from a local folder (downloaded only with `download: true`).

The 32 px images go through the same Inception-crop / resize-and-centre-crop transforms as ImageNet, so
they are upscaled to the configured native and half resolutions.
"""

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets

from ..core.schema import key
from . import transforms
from .config import DataConfig
from .source import DataSource

CIFAR = {  # name -> (torchvision class, the folder torchvision expects under root, per-channel mean and std)
    "cifar10": (datasets.CIFAR10, "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (datasets.CIFAR100, "cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class TransformView(torch.utils.data.Dataset):
    """A transform over an in-memory base dataset, so each resolution reuses one decoded copy."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform
        self.classes, self.targets = base.classes, base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, target = self.base[i]
        return self.transform(img), target


@dataclass
class CifarConfig(DataConfig):
    root: Any = key("folder holding the extracted python version (or where download puts it)", str,
                    allowed="the path of the dataset's folder, e.g. data.root=/datasets/<name>")
    download: Any = key("fetch with torchvision into root if missing", bool)


class CifarSource(DataSource):
    Config = CifarConfig

    def __init__(self, c: dict):
        self.name, self._c = c["name"], c
        self._cls, folder, mean, std = CIFAR[self.name]
        self.root = Path(str(c["root"])).expanduser()
        if not c["download"] and not (self.root / folder).is_dir():
            raise FileNotFoundError(
                f"data.root={str(self.root)!r}: {self.name} not found (expected the extracted python version at "
                f"{self.root / folder}). Set data.download=true to fetch it there with torchvision, or "
                f"download {self._cls.url} and extract it into {self.root}.")
        self.num_classes = 10 if self.name == "cifar10" else 100
        if c["num_classes"] is not None and c["num_classes"] != self.num_classes:
            raise ValueError(f"data.num_classes={c['num_classes']} but {self.name} has {self.num_classes} "
                             "classes; set it to null")
        self.native_resolution, self.half_resolution = c["native_resolution"], c["half_resolution"]
        self.mean, self.std, self.verify_images = c["mean"] or mean, c["std"] or std, c["verify_images"]
        self._base: dict[bool, object] = {}
        self._lock = threading.Lock()

    def _split(self, train: bool):
        with self._lock:
            if train not in self._base:
                try:
                    self._base[train] = self._cls(str(self.root), train=train, download=self._c["download"])
                except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
                    raise ValueError(f"data.root={str(self.root)!r}: {self.name} files are missing or fail "
                                     f"their checksum ({e}); delete them and set data.download=true") from e
            return self._base[train]

    @property
    def class_names(self) -> list[str]:
        return list(self._split(True).classes)

    def train_dataset(self, resolution: int, eval_transform: bool = False) -> TransformView:
        return TransformView(self._split(True), self._transform(resolution, not eval_transform))

    def val_dataset(self, resolution: int) -> TransformView:
        return TransformView(self._split(False), self._transform(resolution, False))

    def _transform(self, resolution: int, train: bool):
        return transforms.for_config(self._c, self._check_resolution(resolution), train)

    def verify(self) -> None:
        """torchvision checks the batch files' MD5 sums when it loads them."""
        self._split(True)
        self._split(False)
