"""`python -m g16net.eval` and `g16net.load_run` on a tiny finished run: the same weights on the same data give the
run's own numbers, nothing of the run changes, and bad inputs are refused before any work."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import g16net
from g16net.core.config import ConfigError
from g16net.eval import evaluate

from .conftest import CONF


@pytest.fixture
def finished_run(smoke_run):
    return smoke_run  # read only: the tests below copy what they change


def eval_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def _snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_eval_gives_the_runs_own_numbers_and_leaves_the_run_alone(finished_run, tmp_path):
    before = _snapshot(finished_run)
    out = tmp_path / "out"
    result = evaluate(eval_cfg(f"run_dir={finished_run}", "resolutions=[64,32]", f"out={out}"))
    metrics = json.loads((finished_run / "metrics.json").read_text())
    run_top1 = {r["resolution"]: r["top1"] for r in metrics["eval"]}
    assert {r["resolution"]: r["top1"] for r in result["eval"]} == run_top1 and set(run_top1) == {32, 64}
    assert json.loads((out / "eval.json").read_text())["eval"] == result["eval"]
    assert result["weights"] == str(finished_run / "checkpoints" / "finetune.pt")
    assert _snapshot(finished_run) == before  # metrics.json, checkpoints, config: byte for byte


def test_load_run_rebuilds_the_model_with_its_final_weights(finished_run):
    model = g16net.load_run(finished_run)
    assert not model.training
    final = torch.load(finished_run / "checkpoints" / "finetune.pt", weights_only=True)
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())
    before_ft = g16net.load_run(finished_run, weights=finished_run / "checkpoints" / "train.pt")
    assert not torch.equal(before_ft.classifier.weight, model.classifier.weight)  # finetuning moved the head
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def _copy_run(src, dst, norm=None, weights=True):
    shutil.copytree(src / ".hydra", dst / ".hydra")
    if weights:
        shutil.copytree(src / "checkpoints", dst / "checkpoints")
    if norm is not None:
        cfg = OmegaConf.load(dst / ".hydra" / "config.yaml")
        cfg.norm.name = norm
        OmegaConf.save(cfg, dst / ".hydra" / "config.yaml")
    return dst


def test_bad_inputs_are_refused_before_any_work(finished_run, tmp_path):
    no_weights = _copy_run(finished_run, tmp_path / "no_weights", weights=False)
    with pytest.raises(ConfigError, match="holds no final weights .*checkpoints/finetune.pt"):
        evaluate(eval_cfg(f"run_dir={no_weights}"))
    other = _copy_run(finished_run, tmp_path / "gn", norm="gn")  # a config the weights were not trained with
    mismatch = r"does not fit the model .*norm gn.*missing blocks\.0\.0\.bn1\.bias.*unexpected .*pn\.proxy_weight"
    with pytest.raises(ConfigError, match=mismatch):
        evaluate(eval_cfg(f"run_dir={other}"))
    with pytest.raises(ConfigError, match=r"weights' run \(.*\) differs in: .*norm.name: run has 'ln_pn', this"):
        evaluate(eval_cfg(f"run_dir={other}", f"ckpt={finished_run}/checkpoints/finetune.pt"))
    with pytest.raises(ConfigError, match="data.root='.*nowhere'"):
        evaluate(eval_cfg(f"run_dir={finished_run}", "data=imagefolder", f"data.root={tmp_path}/nowhere",
                          "data.native_resolution=64", "data.half_resolution=32"))
    with pytest.raises(ConfigError, match=r"resolutions=\[0\] must be"):
        evaluate(eval_cfg(f"run_dir={finished_run}", "resolutions=[0]"))
    assert not (finished_run / "eval").exists() and not (other / "eval").exists()


def test_cli_refuses_with_status_2_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "g16net.eval", f"run_dir={tmp_path / 'typo'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is not a g16net run directory" in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
