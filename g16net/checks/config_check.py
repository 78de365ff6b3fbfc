"""The checks of a composed training config that run before anything touches the run dir or the data: every key
against the schema (g16net/checks/train_schema.py and the data source's Config), then the rules between keys and the
model itself. A layer above data and backends, whose schemas it gathers; below the run, which calls it first.
"""

import functools
import importlib.resources
from pathlib import Path

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core import schema
from ..core.conf_path import CONF_DIR
from ..core.config import ConfigError, model_kwargs
from ..data.config import problems as data_problems
from ..models import create_model


def config_dirs(hydra_cfg=None) -> tuple[Path, ...]:
    """The app's conf/ and the folders a user put on Hydra's search path (`--config-dir`, `hydra.searchpath`), from
    `hydra_cfg` (the `hydra` node) or this job's."""
    dirs = [CONF_DIR]
    if hydra_cfg is None and HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    if hydra_cfg is not None:
        for source in hydra_cfg.runtime.config_sources:
            path = None
            if source.schema == "file":
                path = Path(source.path)
            elif source.schema == "pkg" and source.provider != "hydra":  # a config folder inside a user's package
                try:
                    path = Path(str(importlib.resources.files(source.path.replace("/", "."))))
                except (ImportError, TypeError):
                    path = None
            if path is not None and path.is_dir() and path.resolve() not in dirs:
                dirs.append(path.resolve())
    return tuple(dirs)


@functools.lru_cache(maxsize=8)
def known_keys(dirs: tuple[Path, ...] = (CONF_DIR,)) -> frozenset[str]:
    """Every dotted key some config file in `dirs` sets (any group option, preset or series). The schema says what
    the app reads; this says which keys a user's own data source without a declared Config takes, and the schema's
    test that every key of conf/ is declared."""
    keys = set()

    def walk(node, prefix, top=True):
        for k, v in node.items():
            if k == "defaults" and top:  # Hydra's defaults list, not a key
                continue
            keys.add(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.", top=False)

    for path, group in ((p, p.parent.relative_to(d).as_posix()) for d in dirs for p in sorted(d.rglob("*.yaml"))):
        if group.split("/")[0] == "hydra" or (group == "." and path.stem != "train"):  # hydra's, or another app's
            continue
        text = path.read_text()
        package = "" if group == "." or "@package _global_" in text[:300] else group
        try:
            node = yaml.safe_load(text) or {}
        except yaml.YAMLError:  # a user's folder may hold other yaml; Hydra itself reports a config it cannot load
            continue
        if isinstance(node, dict):
            walk(node, f"{package.replace('/', '.')}." if package else "")
            if package:
                keys.add(package.replace("/", "."))
    return frozenset(keys)


def _unknown_data_key(dirs: tuple[Path, ...]):
    """For a user's data source that declares no keys of its own: a key some config file sets is its argument."""
    def judge(k: str, v) -> str | None:
        known = known_keys(dirs)  # read only for such a source
        return None if k in known else schema.unknown(k, v, [x for x in known if x.startswith("data.")])

    return judge


def config_problems(cfg: DictConfig, dirs: tuple[Path, ...] | None = None) -> list[str]:
    """One line per key of the composed config that its schema (g16net/checks/train_schema.py, the data source's
    Config) refuses; nothing is built or read from disk. `dirs`: the config folders (default: this job's)."""
    from .train_schema import TrainConfig  # it imports every section's schema, the IPU backend's too

    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        return [f"the config cannot be resolved: {e}"]
    values.pop("hydra", None)
    data = values.pop("data", None)
    bad = schema.problems(TrainConfig, values)
    if data is None:
        return [*bad, "data is not set; allowed: data=<name> (docs/config.md)"]
    try:
        bad += data_problems(data, _unknown_data_key(dirs or config_dirs()))[1]
    except ValueError as e:  # no source class to check against: its name or _target_ is the problem
        bad.append(str(e))
    return bad


def check_config(cfg: DictConfig) -> None:
    """Validate everything that needs no data: every key against the schema (all bad keys in one error), then the
    rules between keys and the model itself (built on the meta device)."""
    bad = config_problems(cfg)
    if bad:
        raise ConfigError(bad[0] if len(bad) == 1 else f"{len(bad)} invalid config values:\n  " + "\n  ".join(bad))
    sched = cfg.finetune.scheduler
    if sched.name == "step" and (sched.get("decay_rate") is None or sched.get("decay_epochs") is None):
        raise ConfigError("finetune.scheduler.name='step' needs finetune.scheduler.decay_rate and decay_epochs "
                          "(e.g. +finetune.scheduler.decay_rate=0.97 +finetune.scheduler.decay_epochs=2.4)")
    if cfg.diagnostics.every_epoch and cfg.backend != "lightning":
        raise ConfigError(f"diagnostics.every_epoch=true is recorded by backend=lightning only, not "
                          f"backend={cfg.backend!r}; set diagnostics.every_epoch=false")
    try:
        with torch.device("meta"):
            create_model(**model_kwargs(cfg, num_classes=10))
    except ValueError as e:
        raise ConfigError(f"model/norm config: {e}") from None
