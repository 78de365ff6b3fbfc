"""The `data` config: each source's arguments (its yaml), and validation that runs before anything touches the disk.

Every error names the key as `data.<key>`, the bad value, and what is allowed.
"""

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ..core import schema
from ..core.conf_path import CONF_DIR
from ..core.schema import is_int, key, rule

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
MISSING = schema.MISSING
VERIFY_AUTO_MAX_FILES = 20000  # verify_images: auto opens every file of a set up to this size
CONF_DATA = CONF_DIR / "data"
# Each data source's arguments and their defaults are its conf/data/<name>.yaml, which also names its class
# (`_target_`); nothing here repeats them. NAMES are the sources this package ships; a config composed by Hydra
# may name any other DataSource class of the user's own (its yaml in the user's config folder).
NAMES = tuple(sorted((p.stem for p in CONF_DATA.glob("*.yaml")), key=lambda n: (n != "synthetic", n)))
# What the run reads from every source's config, whoever wrote its yaml.
COMMON_KEYS = ("name", "native_resolution", "half_resolution", "train_scale", "train_ratio", "mean", "std",
               "num_workers")


@functools.lru_cache
def source_defaults(name: str) -> dict:
    """conf/data/<name>.yaml as a plain dict: the arguments data source `name` takes, with their defaults."""
    return to_dict(OmegaConf.load(CONF_DATA / f"{name}.yaml"))


def to_dict(cfg) -> dict:
    """Plain dict from a dict or DictConfig; unset mandatory values (`???`) stay as the string '???'."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"data config must be a mapping (dict or DictConfig), got {type(cfg).__name__}")
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}


def auto_workers(processes_per_node: int = 1) -> int:
    """`num_workers: auto`: the CPUs this process may use, shared by the node's training processes, less one for
    the training loop itself; at most 8 (more rarely helps, and each worker holds a copy of the dataset)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // max(1, processes_per_node) - 1))


def is_missing(value) -> bool:
    return value is None or value == MISSING


def _err(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"data.{key}={value!r} is invalid; allowed: {allowed}")



def check_resolution(key: str, value) -> int:
    if not is_int(value) or value < 1:
        raise _err(key, value, "a positive integer number of pixels")
    return value


@dataclass
class DataConfig:
    """The keys every data source reads. A source's class declares its own keys in a subclass, its `Config`:

        @dataclass
        class MyConfig(DataConfig):
            root: Any = key("the dataset folder", str)
        class MySource(DataSource):
            Config = MyConfig
    """
    _target_: Any = key("the DataSource class that reads this config (dotted path)", str)
    name: Any = key("the dataset's name", str)
    num_classes: Any = key("the class count, asserted", int, ge=1, null="infer from the data", optional=True)
    native_resolution: Any = key("finetune / test resolution in pixels", int, ge=1,
                                 null="the model size's native resolution (imagenet only)")
    half_resolution: Any = key("training resolution in pixels (~half the native pixels)", int, ge=1,
                               null="the model size's half resolution (imagenet only)")
    crop_pct: Any = key("eval: resize the short side to S / crop_pct, centre-crop S", float, gt=0, le=1,
                        optional=True)
    train_scale: Any = key("Inception crop (RandomResizedCrop) area range [lo, hi]", list, length=2, ascending=True,
                           item=rule("", float, gt=0, le=1))
    train_ratio: Any = key("Inception crop aspect-ratio range [lo, hi]", list, length=2, ascending=True,
                           item=rule("", float, gt=0))
    hflip: Any = key("random horizontal flips in training", bool, optional=True)
    interpolation: Any = key("of the resizes", choices=INTERPOLATIONS, optional=True)
    mean: Any = key("per-channel mean, 0-1 units", list, length=3, item=rule("", float, ge=0, le=1),
                    null="the dataset's statistics")
    std: Any = key("per-channel std, 0-1 units", list, length=3, item=rule("", float, gt=0),
                   null="the dataset's statistics")
    test_resolutions: Any = key("evaluated after training", list, item=rule("", int, ge=1),
                                null="{train, native, native + 32}", optional=True)
    verify_images: Any = key("open every image file before training", bool, optional=True,
                             auto=f"when there are <= {VERIFY_AUTO_MAX_FILES} files")
    num_workers: Any = key("data loader workers per process", int, ge=0,
                           auto="CPUs per training process - 1, at most 8")


def _defaults(raw: dict) -> tuple[type, dict]:
    """The source class of `raw` and the arguments it takes, with their defaults: a shipped source's yaml, or for a
    source of the user's own (a `_target_` class that no shipped yaml names) the composed config itself, its yaml."""
    name, target = raw.get("name", "synthetic"), raw.get("_target_")
    shipped = name in NAMES and target in (None, source_defaults(name)["_target_"])
    if target is None and not shipped:
        raise _err("name", name, ", ".join(NAMES) + " (the shipped sources), or a config whose _target_ names a "
                                 "DataSource class")
    target = target or source_defaults(name)["_target_"]
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001  (any import failure of the user's module is the same config error)
        raise _err("_target_", target, f"the dotted path of a DataSource class ({type(e).__name__}: {e})") from None
    from .source import DataSource  # source.py imports this module

    if not (isinstance(cls, type) and issubclass(cls, DataSource)):
        raise _err("_target_", target, "a subclass of g16net.data.DataSource")
    if shipped:
        return cls, source_defaults(name)
    missing = [k for k in COMMON_KEYS if k not in raw]
    if missing:
        raise ValueError(f"data config of {target} lacks key(s) {missing}; every source's yaml sets "
                         f"{', '.join(COMMON_KEYS)} (conf/data/synthetic.yaml shows them)")
    return cls, raw


def declares_own_keys(cls: type) -> bool:
    """The package's sources declare every key they read. A user's class that declares no Config of its own may
    take keys nobody declared (its yaml lists them); the keys it inherits are checked all the same."""
    return cls.__module__.startswith("g16net.") or any(
        "Config" in vars(c) for c in cls.__mro__ if not c.__module__.startswith("g16net."))


def problems(cfg, extra=None) -> tuple[dict, list[str]]:
    """(the source's defaults updated with `cfg`, one line per bad key). `extra(key, value)` judges the keys a
    user's class takes without declaring them (None = accept them: they come from its own yaml)."""
    raw = to_dict(cfg)
    cls, defaults = _defaults(raw)
    c = {**defaults, **raw}
    if isinstance(defaults.get("synthetic"), Mapping) and isinstance(raw.get("synthetic"), Mapping):
        c["synthetic"] = {**defaults["synthetic"], **raw["synthetic"]}
    if declares_own_keys(cls):
        extra = None
    else:
        extra = extra or (lambda k, v: None)
    return c, schema.problems(cls.Config, c, "data.", extra)


def validate(cfg) -> dict:
    """The source's defaults (its yaml) updated with `cfg`, checked against its class's Config; raises ValueError
    naming every bad key."""
    c, bad = problems(cfg)
    if bad:
        raise ValueError("\n".join(bad))
    for k in ("native_resolution", "half_resolution"):
        c[k] = None if c[k] == MISSING else c[k]
    c["train_scale"] = tuple(float(v) for v in c["train_scale"])
    c["train_ratio"] = tuple(float(v) for v in c["train_ratio"])
    for k in ("mean", "std"):
        c[k] = None if c[k] is None else tuple(float(v) for v in c[k])
    if c["num_workers"] == "auto":
        c["num_workers"] = auto_workers()
    return c


