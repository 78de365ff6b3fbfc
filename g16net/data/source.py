"""`DataSource`: what the training job sees of a dataset, whatever it is made of."""

import torch

from .config import VERIFY_AUTO_MAX_FILES, DataConfig, check_resolution


class DataSource:
    """A dataset with its metadata and per-resolution train/val views.

    Images come out as uint8 tensors (3, R, R) with an int label; normalisation with `mean`/`std` (0-1 units,
    per channel) is left to the device side, where it is cheaper.
    """

    name: str
    num_classes: int
    native_resolution: int | None
    half_resolution: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    verify_images: bool | str = "auto"
    Config = DataConfig  # the keys its config takes (a subclass of DataConfig declares a source's own)

    def train_dataset(self, resolution: int, eval_transform: bool = False) -> torch.utils.data.Dataset:
        """Training split at `resolution`; eval_transform=True swaps augmentation for eval preprocessing."""
        raise NotImplementedError

    def val_dataset(self, resolution: int) -> torch.utils.data.Dataset:
        raise NotImplementedError

    @property
    def num_files(self) -> int:
        """Image files on disk (0 when the data is not a set of image files)."""
        return 0

    def verify(self) -> None:
        """Open every image file; raise ValueError naming the first unreadable one. No-op without files."""

    def maybe_verify(self) -> bool:
        """Apply the `verify_images` policy (true / false / auto: <= 20000 files); True if it verified."""
        if self.verify_images is True or (
                self.verify_images == "auto" and 0 < self.num_files <= VERIFY_AUTO_MAX_FILES):
            self.verify()
            return True
        return False

    @staticmethod
    def _check_resolution(resolution) -> int:
        return check_resolution("resolution", resolution)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
                f"native_resolution={self.native_resolution}, half_resolution={self.half_resolution})")
