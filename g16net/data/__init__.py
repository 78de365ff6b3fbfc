"""Datasets for training and evaluation: `build_data(cfg)` -> `DataSource`.

Names: `synthetic` (built-in, procedurally rendered at any resolution; the default), `cifar10`, `cifar100`
(torchvision, local folder), `imagefolder` (root/{train,val}/<class>/ or root/<class>/ + split_fraction),
`imagenet` (root/train, root/val). All yield uint8 (3, S, S) tensors + int labels; normalise on the device
with `DataSource.mean` / `.std`.
"""

from .config import DEFAULTS, NAMES, is_missing, validate
from .source import VERIFY_AUTO_MAX_FILES, DataSource

# Per-channel statistics (0-1 units) used when the config leaves mean/std null.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _check_resolutions(c: dict) -> None:
    """Only imagenet may leave its resolutions null: the run plan takes them from the model size's row."""
    if c["name"] == "imagenet":
        return
    for key in ("native_resolution", "half_resolution"):
        if c[key] is None:
            raise ValueError(f"data.{key} is not set (null or ???); for data.name={c['name']!r} it must be a "
                             "positive integer number of pixels (only imagenet derives it from the model size)")


def build_data(cfg) -> DataSource:
    """Validate the `data` config (cheap checks first: keys, values, paths, class folders), then build.

    Raises ValueError / FileNotFoundError naming the config key, the bad value and what is allowed.
    """
    c = validate(cfg)
    _check_resolutions(c)
    if c["name"] in DEFAULT_STATS:
        mean, std = DEFAULT_STATS[c["name"]]
        c["mean"], c["std"] = c["mean"] or mean, c["std"] or std
    if c["name"] == "synthetic":
        from .synthetic import SyntheticSource

        return SyntheticSource(c)
    if is_missing(c["root"]) or not str(c["root"]).strip():
        raise ValueError(f"data.root={c['root']!r} is not set; data.name={c['name']!r} needs the path of its "
                         "folder (e.g. data.root=/datasets/" + c["name"] + ")")
    if c["name"] in ("cifar10", "cifar100"):
        from .cifar import CifarSource

        return CifarSource(c)
    from .folders import ImageFolderSource

    return ImageFolderSource(c, name=c["name"], allow_split=c["name"] == "imagefolder")


__all__ = ["DEFAULTS", "NAMES", "VERIFY_AUTO_MAX_FILES", "DataSource", "build_data"]
