"""Train / eval preprocessing with torchvision v2; both end in uint8 (3, S, S) tensors, unnormalised."""

import math

from torchvision.transforms import InterpolationMode, v2


def interpolation_mode(name: str) -> InterpolationMode:
    return InterpolationMode(name)


def train_transform(size: int, scale, ratio, hflip: bool, interpolation: str) -> v2.Compose:
    """Inception crop (RandomResizedCrop) + optional horizontal flip at the training resolution."""
    steps = [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio),
                                  interpolation=interpolation_mode(interpolation), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.PILToTensor()])


def eval_transform(size: int, crop_pct: float, interpolation: str) -> v2.Compose:
    """Resize the short side to size / crop_pct (256 for 224 at 0.875), centre-crop size."""
    return v2.Compose([
        v2.Resize(math.floor(size / crop_pct), interpolation=interpolation_mode(interpolation), antialias=True),
        v2.CenterCrop(size), v2.PILToTensor(),
    ])


def for_config(c: dict, size: int, train: bool) -> v2.Compose:
    """The train (Inception crop + flip) or eval (resize + centre crop) transform the `data` config asks for."""
    if train:
        return train_transform(size, c["train_scale"], c["train_ratio"], c["hflip"], c["interpolation"])
    return eval_transform(size, c["crop_pct"], c["interpolation"])
