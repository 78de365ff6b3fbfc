"""The config schema: every key has one, each refuses a value outside its declared type and range by name, every key
of conf/ is declared, the reference docs/config.md is the schema's, and the presets and each sweep's jobs pass."""

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from g16net.checks.config_check import check_config, config_problems, known_keys
from g16net.checks.config_doc import markdown
from g16net.checks.train_schema import TrainConfig
from g16net.core.config import ConfigError
from g16net.core.schema import Rule, is_schema, key, rules
from g16net.data.config import CONF_DATA, NAMES, source_defaults
from g16net.data.config import problems as data_problems
from g16net.data.synthetic import SyntheticConfig, SyntheticSource

from .conftest import QUICK, ROOT, TINY, compose_cfg, run_cli

# the eight values that trained (or failed late, with a traceback) before the schema
MEASURED_BAD = ["optimizer.lr_per_sample=-1", "loss.label_smoothing=1.5", "optimizer.weight_decay=-1",
                "finetune.lr_per_sample=-1", "model.drop_path_rate=1.5", "optimizer.momentum=1.5", "ema.decay=2",
                "scheduler.decay_rate=0"]


def _number(r: Rule, inside: bool):
    """A number inside (or just outside) the declared range."""
    step = 1 if r.type == "int" else 0.5
    lo, hi = r.lo, r.hi
    if not inside:
        return (lo if r.lo_open else lo - step) if lo is not None else (hi if r.hi_open else hi + step)
    if lo is not None and hi is not None:
        return lo if not r.lo_open else (hi if not r.hi_open else (lo + hi) / 2)
    if lo is not None:
        return lo + (step if r.lo_open else 0)
    return hi - (step if r.hi_open else 0) if hi is not None else 3


def valid(r: Rule):
    if r.examples:
        return r.examples[0]
    if r.choices:
        return r.choices[-1]
    if r.type in ("int", "float"):
        return _number(r, True)
    if r.type == "list":
        item = valid(r.item) if r.item else 1
        return [item] * (r.length or 2)
    return {"bool": True, "str": "x", "dict": {}}.get(r.type, 1)


def invalid(r: Rule):
    if r.examples:
        return r.examples[1]
    if r.choices:
        return "not-a-choice"
    if r.type in ("int", "float"):
        return _number(r, False) if r.lo is not None or r.hi is not None else "x"
    if r.type == "list":
        if r.item is not None and r.item.type in ("int", "float"):
            return [invalid(r.item)] * (r.length or 1)
        return [1] * (r.length + 1) if r.length else "x"
    return {"bool": "yes", "str": "", "dict": "x"}[r.type]


def _train_rules():
    return [(k, r) for k, r, _ in rules(TrainConfig) if not is_schema(r) and not k.startswith("data.")]


def _data_rules():
    return [(name, k, r) for name in NAMES for k, r, _ in rules(_source_class(name).Config, "data.")
            if not is_schema(r)]


def _source_class(name):
    from hydra.utils import get_class

    return get_class(source_defaults(name)["_target_"])


def _set(tree: dict, dotted: str, value) -> dict:
    tree = copy.deepcopy(tree)
    node, *path = tree, *dotted.split(".")
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return tree


@pytest.fixture(scope="module")
def base():
    return OmegaConf.to_container(compose_cfg(TINY), resolve=True)


def _problems(tree: dict) -> list[str]:
    return config_problems(OmegaConf.create(tree))


def test_every_key_takes_a_valid_value_and_refuses_an_invalid_one_by_name(base):
    assert _problems(base) == []
    checked = 0
    for k, r in _train_rules():
        good, bad = valid(r), invalid(r)
        assert _problems(_set(base, k, good)) == [], (k, good)
        found = _problems(_set(base, k, bad))
        assert found == [f"{k}={bad!r} is invalid; allowed: " + found[0].split("; allowed: ", 1)[1]], (k, bad)
        if r.null is None:
            assert any(line.startswith(f"{k}=None is invalid") for line in _problems(_set(base, k, None))), k
        else:
            assert _problems(_set(base, k, None)) == [], k
        if r.auto is not None:
            assert _problems(_set(base, k, "auto")) == [], k
        checked += 1
    assert checked > 90


def test_every_data_source_key_refuses_an_invalid_value_by_name():
    for name, k, r in _data_rules():
        required = {"root": "/datasets/x", "native_resolution": 64, "half_resolution": 32}  # the yaml's ??? keys
        defaults = {k: required[k] if v == "???" else v for k, v in source_defaults(name).items()}
        short = k.split(".", 1)[1]
        own = short in ("_target_", "name")  # they pick the source: the valid one is its own
        good = _set(defaults, short, defaults[short] if own else valid(r))
        assert _data_problems(good) == [], (name, k)
        found = _data_problems(_set(defaults, short, invalid(r)))
        assert len(found) == 1 and found[0].startswith(f"{k}={invalid(r)!r} is invalid; allowed: "), (name, k, found)


def _data_problems(c: dict) -> list[str]:
    try:
        return data_problems(c)[1]
    except ValueError as e:  # the source's class cannot be found: one problem, named
        return [str(e)]


def test_every_key_in_conf_is_declared():
    declared = {k for k, _, _ in rules(TrainConfig)}
    declared |= {k for name in NAMES for k, _, _ in rules(_source_class(name).Config, "data.")}
    undeclared = sorted(k for k in known_keys() if k.split(".")[0] != "hydra" and k not in declared)
    assert undeclared == [], f"keys set in conf/ but not in the schema (g16net/checks/train_schema.py): {undeclared}"
    # and every data source's yaml sets only what its class declares
    for name in NAMES:
        assert set(yaml.safe_load((CONF_DATA / f"{name}.yaml").read_text())) <= \
            {k.split(".")[1] for k, _, _ in rules(_source_class(name).Config, "data.")}


def test_all_bad_keys_at_once_and_unknown_keys_named(base):
    cfg = compose_cfg([*TINY, *MEASURED_BAD, "+epoch=3", "+trainer.max_epoch=2", "data.crop_pct=0"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    text = str(err.value)
    assert text.startswith("11 invalid config values:")
    for override in MEASURED_BAD:
        k, v = override.split("=")
        assert f"\n  {k}={v} is invalid; allowed: " in text, override
    assert "unknown config key 'epoch' (value 3); nothing reads it, did you mean 'epochs'?" in text
    assert "unknown config key 'trainer.max_epoch' (value 2); it is no pl.Trainer argument" in text
    assert "data.crop_pct=0 is invalid; allowed: a number in (0, 1]" in text
    check_config(compose_cfg([*TINY, "+trainer.max_time=null"]))  # any pl.Trainer argument may be added
    with pytest.raises(ConfigError, match=r"finetune\.scheduler\.name='step' needs finetune\.scheduler\.decay_rate"):
        check_config(compose_cfg([*TINY, "finetune.scheduler.name=step"]))  # a rule between keys, named as clearly


def test_reference_is_in_step_with_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == markdown() + "\n", \
        "docs/config.md is stale: python -m g16net.checks.config_doc > docs/config.md"
    help_template = compose_cfg(return_hydra_config=True).hydra.help.template  # what --help prints
    assert "docs/config.md" in help_template


def test_cli_refuses_every_measured_bad_value_at_once_before_the_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    proc = run_cli([*TINY, *MEASURED_BAD, f"hydra.run.dir={run_dir}"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    for override in MEASURED_BAD:
        assert f"{override} is invalid; allowed: " in out, override
    assert not (tmp_path / "runs").exists()


def test_cli_sweep_refuses_a_bad_job_before_any_job_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *QUICK, "ema.decay=0.97,9.7", "scheduler.decay_rate=0.97,0", f"hydra.sweep.dir={sweep}"],
                   check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ema.decay=9.7 is invalid; allowed: a number in (0, 1)" in proc.stderr
    assert "scheduler.decay_rate=0 is invalid; allowed: a number in (0, 1]" in proc.stderr
    assert "3 of 4 sweep jobs" in proc.stderr
    assert not sweep.exists()


def test_schema_is_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().load("g16net_train_schema.yaml").node
    assert set(node) == {k for k, _, _ in rules(TrainConfig) if "." not in k}
    assert json.dumps(OmegaConf.to_container(node))  # a plain structured config


@dataclass
class GreetingConfig(SyntheticConfig):
    greeting: Any = key("what the source says", str)


class GreetingSource(SyntheticSource):
    """A user's own source that declares its own key (its Config): that key is checked as the package's are."""
    Config = GreetingConfig


def test_a_users_data_source_declares_its_own_keys():
    own = {**source_defaults("synthetic"), "_target_": f"{__name__}.GreetingSource", "name": "mine"}
    assert data_problems({**own, "greeting": "hello"})[1] == []
    assert data_problems({**own, "greeting": 5})[1] == ["data.greeting=5 is invalid; allowed: a non-empty string"]
    assert data_problems({**own, "greeting": "hi", "greting": "x"})[1][0].startswith(
        "unknown config key 'data.greting' (value 'x'); nothing reads it, did you mean 'data.greeting'?")
    # a class that declares no keys of its own takes its yaml's as they are; the inherited ones are checked
    plain = {**own, "_target_": "g16net.data.synthetic.SyntheticSource"}
    assert data_problems({**plain, "greeting": "hi"})[1][0].startswith("unknown config key 'data.greeting'")
