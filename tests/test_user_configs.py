"""A user's own configs in a folder of their own project (Hydra's search path), with the classes and norms they
name in a module of their own: data sources, norms, experiments and sweeps the package has never heard of."""

import json
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from g16net.core.config import ConfigError, model_kwargs
from g16net.data import DataSource, build_data
from g16net.models import NORMS, create_model

from .conftest import ROOT, TINY, compose_cfg, run_cli

MODULE = "my_g16net_extras"  # the user's module: a data source class and a norm
NORM = "gn2_mine"


def _write_user_project(root):
    (root / MODULE).with_suffix(".py").write_text(textwrap.dedent(f"""
        from timm.layers import GroupNormAct

        from g16net.data.synthetic import SyntheticSource
        from g16net.models import register_norm


        class GreetingSynth(SyntheticSource):
            '''The built-in synthetic set under a name of its own, with one argument of its own.'''

            def __init__(self, c):
                super().__init__(c)
                self.name, self.greeting = c["name"], c["greeting"]


        def _gn2(c, apply_act, act_layer):
            return GroupNormAct(c, num_groups=2, eps=1e-3, apply_act=apply_act, act_layer=act_layer)


        register_norm("{NORM}", "GN-2 (mine)", _gn2)
    """))
    conf = root / "conf"
    for group in ("data", "norm", "experiment", "sweep"):
        (conf / group).mkdir(parents=True)
    data = (ROOT / "conf" / "data" / "synthetic.yaml").read_text()
    data = data.replace("_target_: g16net.data.synthetic.SyntheticSource", f"_target_: {MODULE}.GreetingSynth")
    data = data.replace("name: synthetic", "name: mysynth").replace("train_size: 4000", "train_size: 256")
    (conf / "data" / "mysynth.yaml").write_text(data + "greeting: hello\n")
    (conf / "norm" / "mine.yaml").write_text(f"name: {NORM}\nimport: {MODULE}  # registers the norm\n")
    (conf / "experiment" / "myexp.yaml").write_text("# @package _global_\nseed: 7\n")
    (conf / "sweep" / "mysweep.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        hydra:
          sweeper:
            params:
              data: mysynth
              norm: mine
    """))
    return conf


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    conf = _write_user_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield conf
    sys.modules.pop(MODULE, None)
    NORMS.pop(NORM, None)


def test_own_data_norm_and_experiment_compose_and_check(user_project):
    cfg = compose_cfg([*TINY, f"hydra.searchpath=[file://{user_project}]", "data=mysynth", "norm=mine",
                       "experiment=myexp"])
    assert (cfg.data.name, cfg.norm.name, cfg.seed) == ("mysynth", NORM, 7)
    kwargs = model_kwargs(cfg, num_classes=10)  # imports the norm's module, which registers it
    assert kwargs["norm"] == NORM and NORMS[NORM].label == "GN-2 (mine)"
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model(**kwargs).parameters()) > 0
    src = build_data(cfg.data)
    assert type(src).__name__ == "GreetingSynth" and src.greeting == "hello" and src.num_classes == 10


def test_own_configs_fail_early_naming_the_key(user_project):
    bad_import = compose_cfg([*TINY, f"hydra.searchpath=[file://{user_project}]", "norm=mine",
                              "norm.import=not_a_module_anywhere"])
    with pytest.raises(ConfigError, match=r"norm\.import='not_a_module_anywhere' cannot be imported"):
        model_kwargs(bad_import, num_classes=10)
    data = OmegaConf.to_container(OmegaConf.load(user_project / "data" / "mysynth.yaml"))
    with pytest.raises(ValueError, match=r"data\._target_='collections\.OrderedDict' is invalid; allowed: a "
                                         r"subclass of g16net\.data\.DataSource"):
        build_data({**data, "_target_": "collections.OrderedDict"})
    with pytest.raises(ValueError, match=rf"data\._target_='{MODULE}\.Nope' is invalid; allowed: the dotted path"):
        build_data({**data, "_target_": f"{MODULE}.Nope"})
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['mean', 'std'\]"):
        build_data({k: v for k, v in data.items() if k not in ("mean", "std")})
    # a name with no yaml here and no class: the shipped names are listed
    with pytest.raises(ValueError, match=r"data\.name='mysynth' is invalid; allowed: synthetic, cifar10"):
        build_data({"name": "mysynth"})
    assert issubclass(type(build_data(data)), DataSource)


@pytest.mark.slow  # a whole (smoke-sized) training job in a fresh process
def test_own_sweep_of_own_data_and_norm_runs_end_to_end(user_project, tmp_path):
    """`--config-dir`: the user's folder joins the package's configs; its sweep picks its data and norm, and its
    experiment comes from the command line. One job, every phase."""
    sweep = tmp_path / "sweep"
    run_cli(["-m", "--config-dir", str(user_project), "sweep=mysweep", "experiment=myexp", *TINY,
             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    assert (metrics["dataset"], metrics["model"]["norm"], metrics["seed"]) == ("mysynth", NORM, 7)
    assert metrics["config"]["data"]["greeting"] == "hello"
