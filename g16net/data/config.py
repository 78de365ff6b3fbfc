"""The `data` config: each source's arguments (its yaml), and validation that runs before anything touches the disk.

Every error names the key as `data.<key>`, the bad value, and what is allowed.
"""

import functools
import math
import os
from collections.abc import Mapping

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ..core.conf_path import CONF_DIR

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
MISSING = "???"  # OmegaConf's marker for a mandatory value nobody set
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_resolution(key: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise _err(key, value, "a positive integer number of pixels")
    return value


def _pair(key: str, value, lo_bound: float, hi_bound: float) -> tuple[float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_num(v) for v in value)
          and lo_bound < value[0] <= value[1] <= hi_bound)
    if not ok:
        raise _err(key, value, f"[lo, hi] with {lo_bound} < lo <= hi <= {hi_bound}")
    return float(value[0]), float(value[1])


def _triple(key: str, value, positive: bool) -> tuple[float, float, float] | None:
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_num(v) for v in value)
          and all(v > 0 if positive else 0 <= v <= 1 for v in value))
    if not ok:
        raise _err(key, value, f"null (dataset default) or 3 per-channel values in 0-1 units"
                               f"{' > 0' if positive else ''}")
    return tuple(float(v) for v in value)


def _flag(v) -> bool:
    return isinstance(v, bool)


# key -> (accepts the value?, what is allowed); a key is checked where the source takes it.
CHECKS = {
    "num_classes": (lambda v: v is None or (_is_int(v) and v >= 1), "null (infer from the data) or a positive integer"),
    "split_fraction": (lambda v: v is None or (_is_num(v) and 0 < v < 1),
                       "null (use root/train and root/val) or the training fraction, 0 < f < 1"),
    "split_seed": (_is_int, "an integer"),
    "download": (_flag, "true or false"),
    "hflip": (_flag, "true or false"),
    "crop_pct": (lambda v: _is_num(v) and 0 < v <= 1, "0 < crop_pct <= 1 (eval resizes to S / crop_pct, then crops S)"),
    "interpolation": (lambda v: v in INTERPOLATIONS, ", ".join(INTERPOLATIONS)),
    "verify_images": (lambda v: v in (True, False, "auto"), "true, false or auto (verify when <= 20000 files)"),
    "test_resolutions": (lambda v: v is None or (isinstance(v, (list, tuple)) and v and all(_is_int(r) and r > 0
                                                                                           for r in v)),
                         "null (train, native and native + 32) or a list of positive pixels"),
    "num_workers": (lambda v: v == "auto" or (_is_int(v) and v >= 0), "an integer >= 0 or auto (from the CPUs)"),
}
SYNTHETIC_CHECKS = {"train_size": (lambda v: _is_int(v) and v >= 1, "a positive integer number of images"),
                    "val_size": (lambda v: _is_int(v) and v >= 1, "a positive integer number of images"),
                    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0")}


def _defaults(raw: dict) -> dict:
    """The arguments the source of `raw` takes, with their defaults: a shipped source's yaml, or for a source of
    the user's own (a `_target_` class that no shipped yaml names) the composed config itself, its yaml."""
    name, target = raw.get("name", "synthetic"), raw.get("_target_")
    if name in NAMES and target in (None, source_defaults(name)["_target_"]):
        return source_defaults(name)
    if target is None:
        raise _err("name", name, ", ".join(NAMES) + " (the shipped sources), or a config whose _target_ names a "
                                 "DataSource class")
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001  (any import failure of the user's module is the same config error)
        raise _err("_target_", target, f"the dotted path of a DataSource class ({type(e).__name__}: {e})") from None
    from .source import DataSource  # source.py imports this module

    if not (isinstance(cls, type) and issubclass(cls, DataSource)):
        raise _err("_target_", target, "a subclass of g16net.data.DataSource")
    missing = [k for k in COMMON_KEYS if k not in raw]
    if missing:
        raise ValueError(f"data config of {target} lacks key(s) {missing}; every source's yaml sets "
                         f"{', '.join(COMMON_KEYS)} (conf/data/synthetic.yaml shows them)")
    return raw


def validate(cfg) -> dict:
    """The source's defaults (its yaml) updated with `cfg`, type-checked; raises ValueError naming the first bad
    key. Keys another source takes are unknown here."""
    raw = to_dict(cfg)
    defaults = _defaults(raw)
    c = _merged("", defaults, raw, f" for data.name={raw.get('name', 'synthetic')!r}")
    if "synthetic" in c:
        c["synthetic"] = _merged("synthetic.", defaults["synthetic"] or {}, c["synthetic"] or {})
        _check(c["synthetic"], SYNTHETIC_CHECKS, "synthetic.")
    _check(c, CHECKS)
    for key in ("native_resolution", "half_resolution"):
        c[key] = None if c[key] == MISSING else c[key]
        if c[key] is not None:
            check_resolution(key, c[key])
    c["train_scale"] = _pair("train_scale", c["train_scale"], 0, 1)
    c["train_ratio"] = _pair("train_ratio", c["train_ratio"], 0, math.inf)
    c["mean"] = _triple("mean", c["mean"], positive=False)
    c["std"] = _triple("std", c["std"], positive=True)
    if c["num_workers"] == "auto":
        c["num_workers"] = auto_workers()
    return c


def _merged(prefix: str, defaults: dict, given, where: str = "") -> dict:
    if not isinstance(given, Mapping):
        raise _err(prefix.rstrip("."), given, "a mapping with keys " + ", ".join(defaults))
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown data{'.' + prefix.rstrip('.') if prefix else ' config'} key(s) {unknown}{where}; "
                         f"allowed: {', '.join(defaults)}")
    return {**defaults, **given}


def _check(c: dict, checks: dict, prefix: str = "") -> None:
    for key, (ok, allowed) in checks.items():
        if key in c and not ok(c[key]):
            raise _err(prefix + key, c[key], allowed)
