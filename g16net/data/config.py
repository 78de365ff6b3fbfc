"""The `data` config: each source's arguments (its yaml), and validation that runs before anything touches the disk.

Every error names the key as `data.<key>`, the bad value, and what is allowed.
"""

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
MISSING = "???"  # OmegaConf's marker for a mandatory value nobody set
CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"
# Each data source's arguments and their defaults are its conf/data/<name>.yaml, which also names its class
# (`_target_`); nothing here repeats them.
NAMES = tuple(sorted((p.stem for p in CONF_DATA.glob("*.yaml")), key=lambda n: (n != "synthetic", n)))


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


def validate(cfg) -> dict:
    """The source's defaults (its yaml) updated with `cfg`, type-checked; raises ValueError naming the first bad
    key. Keys another source takes are unknown here."""
    raw = to_dict(cfg)
    name = raw.get("name", "synthetic")
    if name not in NAMES:
        raise _err("name", name, ", ".join(NAMES))
    defaults = source_defaults(name)
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ValueError(f"unknown data config key(s) {unknown} for data.name={name!r}; allowed: "
                         f"{', '.join(defaults)}")
    c = {**defaults, **raw}
    if "synthetic" in c:
        syn = c["synthetic"] if c["synthetic"] is not None else {}
        if not isinstance(syn, Mapping):
            raise _err("synthetic", syn, "a mapping with keys " + ", ".join(defaults["synthetic"]))
        bad = sorted(set(syn) - set(defaults["synthetic"]))
        if bad:
            raise ValueError(f"unknown data.synthetic key(s) {bad}; allowed: {', '.join(defaults['synthetic'])}")
        c["synthetic"] = syn = {**defaults["synthetic"], **syn}
        for key in ("train_size", "val_size"):
            if not _is_int(syn[key]) or syn[key] < 1:
                raise _err(f"synthetic.{key}", syn[key], "a positive integer number of images")
        if not _is_int(syn["seed"]) or syn["seed"] < 0:
            raise _err("synthetic.seed", syn["seed"], "an integer >= 0")
    for key in ("native_resolution", "half_resolution"):
        if c[key] == MISSING:
            c[key] = None
        if c[key] is not None:
            check_resolution(key, c[key])
    if c["num_classes"] is not None and (not _is_int(c["num_classes"]) or c["num_classes"] < 1):
        raise _err("num_classes", c["num_classes"], "null (infer from the data) or a positive integer")
    if c.get("split_fraction") is not None and not (_is_num(c["split_fraction"]) and 0 < c["split_fraction"] < 1):
        raise _err("split_fraction", c["split_fraction"],
                   "null (use root/train and root/val) or the training fraction, 0 < f < 1")
    if "split_seed" in c and not _is_int(c["split_seed"]):
        raise _err("split_seed", c["split_seed"], "an integer")
    for key in ("download", "hflip"):
        if key in c and not isinstance(c[key], bool):
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
    return c
