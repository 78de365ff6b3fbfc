"""The helper scripts (scripts/*.py) refuse bad arguments with argparse's status 2 and a message naming the
argument and what is allowed, before any work."""

import importlib.util

import pytest

from .conftest import ROOT


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--pn-impl", "folded"], "--pn-impl: 'folded' cannot train; allowed: fused, aten, reference"),
    (["--pn-impl", "fast"], "--pn-impl: 'fast' cannot train; allowed:"),
    (["--warmup", "0"], "--warmup and --steps must be >= 1"),
    (["--layout", "nhcw"], "argument --layout: invalid choice: 'nhcw'"),
])
def test_profile_step_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        _script("profile_step").parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_real_data_refuses_bad_arguments_and_writes_nothing(tmp_path, capsys):
    real_data = _script("real_data")
    taken = tmp_path / "taken"
    taken.mkdir()
    for argv, message in ((["digits", str(taken)], f"{taken} exists; give a new folder"),
                          (["fashion", str(tmp_path / "new")], "fashion needs --npm-dir"),
                          (["cifar", str(tmp_path / "new")], "invalid choice: 'cifar'")):
        with pytest.raises(SystemExit) as stop:
            real_data.main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and not any(taken.iterdir())


def test_gpu_summary_names_missing_inputs_and_fails(tmp_path, capsys):
    missing = tmp_path / "peer.csv"
    assert _script("gpu_summary").main(["--peer", str(missing)]) == 1
    assert f"missing: {missing} (its bench step failed or did not run)" in capsys.readouterr().out
