"""The `data` config: defaults, and validation that runs before anything touches the disk.

Every error names the key as `data.<key>`, the bad value, and what is allowed.
"""

import math
import os
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

NAMES = ("synthetic", "cifar10", "cifar100", "imagefolder", "imagenet")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
MISSING = "???"  # OmegaConf's marker for a mandatory value nobody set

DEFAULTS = dict(
    name="synthetic", root=None, num_classes=None, native_resolution=None, half_resolution=None,
    split_fraction=None, split_seed=0, download=False, crop_pct=0.875, train_scale=(0.05, 1.0),
    train_ratio=(3 / 4, 4 / 3), hflip=True, interpolation="bicubic", mean=None, std=None,
    verify_images="auto", num_workers=4, test_resolutions=None,
    synthetic=dict(train_size=4000, val_size=1000, seed=0),
)
SYNTHETIC_DEFAULTS = DEFAULTS["synthetic"]
# Per-dataset defaults on top of DEFAULTS (the conf/data/*.yaml files spell the same values out).
NAME_DEFAULTS = {
    # Mild crops only (zoom <= 1.3x): see conf/data/synthetic.yaml and g16net/data/synthetic.py.
    "synthetic": dict(native_resolution=96, half_resolution=64, crop_pct=1.0, train_scale=(0.6, 1.0),
                      interpolation="bilinear", num_workers=0),
    "cifar10": dict(native_resolution=96, half_resolution=64),
    "cifar100": dict(native_resolution=96, half_resolution=64),
}


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


def validate(cfg) -> dict:
    """Merged, type-checked copy of the config; raises ValueError naming the first bad key."""
    raw = to_dict(cfg)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown data config key(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
    c = {**DEFAULTS, **NAME_DEFAULTS.get(raw.get("name", DEFAULTS["name"]), {}), **raw}
    syn = c["synthetic"] if c["synthetic"] is not None else {}
    if not isinstance(syn, Mapping):
        raise _err("synthetic", syn, "a mapping with keys " + ", ".join(SYNTHETIC_DEFAULTS))
    bad = sorted(set(syn) - set(SYNTHETIC_DEFAULTS))
    if bad:
        raise ValueError(f"unknown data.synthetic key(s) {bad}; allowed: {', '.join(SYNTHETIC_DEFAULTS)}")
    c["synthetic"] = {**SYNTHETIC_DEFAULTS, **syn}

    if c["name"] not in NAMES:
        raise _err("name", c["name"], ", ".join(NAMES))
    for key in ("native_resolution", "half_resolution"):
        if c[key] == MISSING:
            c[key] = None
        if c[key] is not None:
            check_resolution(key, c[key])
    if c["num_classes"] is not None and (not _is_int(c["num_classes"]) or c["num_classes"] < 1):
        raise _err("num_classes", c["num_classes"], "null (infer from the data) or a positive integer")
    if c["split_fraction"] is not None and not (_is_num(c["split_fraction"]) and 0 < c["split_fraction"] < 1):
        raise _err("split_fraction", c["split_fraction"],
                   "null (use root/train and root/val) or the training fraction, 0 < f < 1")
    if not _is_int(c["split_seed"]):
        raise _err("split_seed", c["split_seed"], "an integer")
    for key in ("download", "hflip"):
        if not isinstance(c[key], bool):
            raise _err(key, c[key], "true or false")
    if not (_is_num(c["crop_pct"]) and 0 < c["crop_pct"] <= 1):
        raise _err("crop_pct", c["crop_pct"], "0 < crop_pct <= 1 (eval resizes to S / crop_pct, then crops S)")
    c["train_scale"] = _pair("train_scale", c["train_scale"], 0, 1)
    c["train_ratio"] = _pair("train_ratio", c["train_ratio"], 0, math.inf)
    if c["interpolation"] not in INTERPOLATIONS:
        raise _err("interpolation", c["interpolation"], ", ".join(INTERPOLATIONS))
    c["mean"] = _triple("mean", c["mean"], positive=False)
    c["std"] = _triple("std", c["std"], positive=True)
    if c["verify_images"] not in (True, False, "auto"):
        raise _err("verify_images", c["verify_images"], "true, false or auto (verify when <= 20000 files)")
    tests = c["test_resolutions"]
    if tests is not None and not (isinstance(tests, (list, tuple)) and tests
                                  and all(_is_int(r) and r > 0 for r in tests)):
        raise _err("test_resolutions", tests, "null (train, native and native + 32) or a list of positive pixels")
    if c["num_workers"] == "auto":
        c["num_workers"] = auto_workers()
    if not _is_int(c["num_workers"]) or c["num_workers"] < 0:
        raise _err("num_workers", c["num_workers"], "an integer >= 0 or auto (from the CPUs)")
    for key in ("train_size", "val_size"):
        v = c["synthetic"][key]
        if not _is_int(v) or v < 1:
            raise _err(f"synthetic.{key}", v, "a positive integer number of images")
    if not _is_int(c["synthetic"]["seed"]) or c["synthetic"]["seed"] < 0:
        raise _err("synthetic.seed", c["synthetic"]["seed"], "an integer >= 0")
    return c
