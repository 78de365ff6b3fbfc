"""An unknown option of any config group exits 2 naming the key, the value and the allowed options, as every other
bad value does; Hydra alone would report it with exit 1. In-process: Hydra refuses while composing, before any
heavy import or the run dir."""

import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from g16net import eval as g16net_eval
from g16net import train

from .conftest import ROOT

GROUPS = ["model", "norm", "data", "resolution", "trainer", "logger", "series", "experiment", "debug", "sweep",
          "hydra/launcher"]


def _exit_of(main, argv, monkeypatch, capsys) -> tuple[int, str]:
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("group", GROUPS)
def test_unknown_group_option_exits_2_with_the_allowed_ones(group, tmp_path, monkeypatch, capsys):
    allowed = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    assert allowed, group
    code, err = _exit_of(train.main, ["g16net.train", f"{group}=typo", f"hydra.run.dir={tmp_path / 'run'}"],
                         monkeypatch, capsys)
    assert code == 2 and f"[g16net][ERROR] - {group}=typo is not allowed; allowed: " in err, err
    listed = err.split("allowed: ", 1)[1].strip().split(", ")
    # Hydra's own launchers (basic) and the plugin's come on top of conf/hydra/launcher/
    assert listed == allowed if not group.startswith("hydra/") else set(allowed) < set(listed), listed
    assert not (tmp_path / "run").exists()


def test_eval_unknown_data_option_exits_2(tmp_path, monkeypatch, capsys):
    code, err = _exit_of(g16net_eval.main, ["g16net.eval", f"run_dir={tmp_path}", "data=imagenett"],
                         monkeypatch, capsys)
    assert code == 2 and "data=imagenett is not allowed; allowed: cifar10, cifar100, imagefolder" in err, err


def test_a_user_config_dir_adds_its_options_to_the_allowed_ones(tmp_path, monkeypatch, capsys):
    (tmp_path / "norm").mkdir()
    (tmp_path / "norm" / "mine.yaml").write_text("name: gn\n")
    code, err = _exit_of(train.main, ["g16net.train", "--config-dir", str(tmp_path), "norm=mien"], monkeypatch, capsys)
    assert code == 2 and "norm=mien is not allowed; allowed: " in err and "mine" in err and "ln_pn" in err, err


def test_a_missing_primary_config_is_still_hydras_to_report(monkeypatch, capsys):
    code, err = _exit_of(train.main, ["g16net.train", "--config-name", "nope"], monkeypatch, capsys)
    assert code == 1 and "Cannot find primary config 'nope'" in err, err
