"""Datasets for training and evaluation: `build_data(cfg)` -> `DataSource`.

Names (one conf/data/<name>.yaml each, holding the source's class and its arguments): `synthetic` (built-in,
procedurally rendered at any resolution; the default), `cifar10`, `cifar100` (torchvision, local folder),
`imagefolder` (root/{train,val}/<class>/ or root/<class>/ + split_fraction), `imagenet` (root/train, root/val).
All yield uint8 (3, S, S) tensors + int labels; normalise on the device with `DataSource.mean` / `.std`.
A source of one's own is a DataSource subclass that its yaml names (`_target_`), in the user's config folder.
"""

from hydra.utils import get_class

from .config import NAMES, is_missing, source_defaults, validate
from .source import VERIFY_AUTO_MAX_FILES, DataSource


def _check_resolutions(c: dict) -> None:
    """Only imagenet may leave its resolutions null: the run plan takes them from the model size's row."""
    if c["name"] == "imagenet":
        return
    for key in ("native_resolution", "half_resolution"):
        if c[key] is None:
            raise ValueError(f"data.{key} is not set (null or ???); for data.name={c['name']!r} it must be a "
                             "positive integer number of pixels (only imagenet derives it from the model size)")


def build_data(cfg) -> DataSource:
    """Validate the `data` config (cheap checks first: keys, values, paths, class folders), then build the class
    its yaml names (`_target_`) from it.

    Raises ValueError / FileNotFoundError naming the config key, the bad value and what is allowed.
    """
    c = validate(cfg)
    _check_resolutions(c)
    if "root" in c and (is_missing(c["root"]) or not str(c["root"]).strip()):
        raise ValueError(f"data.root={c['root']!r} is not set; data.name={c['name']!r} needs the path of its "
                         "folder (e.g. data.root=/datasets/" + c["name"] + ")")
    return get_class(c["_target_"])(c)


__all__ = ["NAMES", "VERIFY_AUTO_MAX_FILES", "DataSource", "build_data", "source_defaults"]
