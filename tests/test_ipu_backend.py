"""backend=ipu (g16net.backends.ipu) against a recording fake of PopTorch (tests/fake_poptorch.py).

Behaviour only: a tiny job completes (train, finetune, evaluation, throughput) and writes the usual metrics.json,
checkpoints and logs, resumes, and a bad IPU config fails with a clear error before any training. The fake enforces
the compiler's pipeline / IPU-count rules and PopTorch's output modes but runs the model eagerly on the CPU, so
nothing here says anything about IPU numerics (fp16, loss scaling, TF-style RMSprop, stochastic rounding), memory
or speed.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from timm.utils import ModelEmaV3

import g16net.core.recipe as recipe
import g16net.run.runner as runner
from g16net.backends.ipu import IPUBackend
from g16net.core.config import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
import fake_poptorch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Small but with every split != 1 and a 2-IPU pipeline x 2 replicas = 4 IPUs: micro-batch 2 = 12 / (2 replicas x
# 3 accumulation, the least a 2-IPU pipeline trains with), 2 device iterations; evaluation 2 x 3 iterations x 2.
WIRING = ["batch_size=12", "eval_batch_size=4", "ipu.replication_factor=2", "ipu.gradient_accumulation=3",
          "ipu.device_iterations=2", "ipu.eval_device_iterations=3", "ipu.eval_batch_size=2",
          "ipu.available_memory_proportion=0.3", "ipu.half=true", "ipu.half_partials=true",
          "ipu.pipeline=[{layer:blocks.3,ipu:1}]", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


class OldTimmEma(ModelEmaV3):
    """ModelEmaV3 as older timm releases (an SDK environment's, installed --no-deps): a plain foreach lerp, which
    refuses fp16 weights into the fp32 average."""
    updates = 0

    def _foreach_lerp_(self, ema_values, model_values, weight):
        torch._foreach_lerp_(ema_values, model_values, weight=weight)
        OldTimmEma.updates += 1


def ipu_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["debug=smoke", "backend=ipu", *overrides])


@pytest.fixture(scope="module")
def fake():
    """The fake installed as `poptorch`, one CPU thread (B0 on 2 contended threads is far slower than on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "poptorch", fake_poptorch)
        fake_poptorch.reset()
        yield fake_poptorch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke(fake, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ipu_smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe, "ModelEmaV3", OldTimmEma)
        metrics = runner.run(ipu_cfg(*WIRING, f"ipu.executable_cache_dir={run_dir / 'cache'}"), run_dir)
    return metrics, run_dir, list(fake.CALLS)


def _calls(recorded, name):
    return [kw for n, kw in recorded if n == name]


@pytest.mark.skipif(importlib.util.find_spec("poptorch") is not None, reason="PopTorch is installed here")
def test_cli_without_poptorch_fails_first(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "g16net.train", "debug=smoke", "backend=ipu",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "PopTorch" in out and "Poplar SDK" in out and "backend=lightning" in out, out[-2000:]
    assert not run_dir.exists() or not any(run_dir.iterdir())  # refused before the run dir is claimed


def test_poptorch_checked_before_data(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "poptorch", None)  # makes `import poptorch` raise ImportError

    def no_data(*a, **k):
        raise AssertionError("data was built before PopTorch was checked")

    monkeypatch.setattr(runner, "load_data", no_data)
    with pytest.raises(ConfigError, match="PopTorch"):
        runner.run(ipu_cfg(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _check_metrics_contract(smoke):
    metrics, run_dir, _ = smoke
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["model"]["name"] == "g16_efficientnet_b0" and metrics["params"] > 0
    data = metrics["config"]["data"]
    assert metrics["train_resolution"] == data["half_resolution"] and metrics["train_macs"] > 0
    assert metrics["train_throughput"] > 0 and metrics["train_throughput_pipeline"] > 0
    assert metrics["world_size"] == 2 and metrics["per_device_batch_size"] == 2 and metrics["precision"] == "16-true"
    assert metrics["accumulate_grad_batches"] == 3 and metrics["throughput_protocol"]["ipus_per_replica"] == 2
    tests = sorted(set(metrics["config"]["eval"]["resolutions"]) | {data["native_resolution"]})
    assert [r["resolution"] for r in metrics["eval"]] == [r["resolution"] for r in metrics["eval_before_finetune"]]
    assert [r["resolution"] for r in metrics["eval"]] == tests
    for row in metrics["eval"] + metrics["eval_before_finetune"]:
        assert 0 <= row["top1"] <= row["top5"] <= 100 and row["macs"] > 0 and row["infer_throughput"] > 0
    for name in ("train.pt", "train.json", "finetune.pt", "finetune.json", "train/last.ckpt", "finetune/last.ckpt"):
        assert (run_dir / "checkpoints" / name).exists(), name
    assert torch.load(run_dir / "checkpoints" / "train/last.ckpt", weights_only=False)["backend"] == "ipu"
    for phase in ("train", "finetune", "eval_before_finetune", "eval"):  # the CSV logger saw every phase
        assert (run_dir / "logs" / phase / "metrics.csv").exists(), phase


def _check_train_loss_covers_every_micro_batch(smoke):
    """train/loss is the mean over all micro-batches of a call, not the last one PopTorch's default returns."""
    _, run_dir, rec = smoke
    calls = [c["micro_losses"] for c in _calls(rec, "call") if c["training"]]
    rows = (run_dir / "logs" / "train" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("train/loss")
    logged = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(calls[0]) == 12 and len(logged) == 2  # 2 iterations x 3 accumulation x 2 replicas; 2 calls
    for got, micro in zip(logged, calls):
        assert got == pytest.approx(sum(micro) / len(micro), rel=1e-5)
        assert got != pytest.approx(micro[-1], rel=1e-5)  # a single micro-batch would be a different number


def _check_ema_from_fp32_weights(smoke):
    """ipu.half=true compiles fp16 weights; the average (an older timm's strict one) was still updated each epoch."""
    metrics, _, _ = smoke
    assert OldTimmEma.updates >= metrics["epochs"]  # and none raised, as fp16 weights into the average would


def _check_resume_last(fake, smoke, tmp_path):
    """ckpt_path=last: finished phases load their files; an unfinished one resumes from <phase>/last.ckpt."""
    _, run_dir, _ = smoke
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoints").mkdir()
    for name in ("train.pt", "train.json", "finetune"):
        src = run_dir / "checkpoints" / name
        dst = resumed / "checkpoints" / name
        dst.mkdir() if src.is_dir() else dst.write_bytes(src.read_bytes())
    (resumed / "checkpoints/finetune/last.ckpt").write_bytes((run_dir / "checkpoints/finetune/last.ckpt").read_bytes())
    fake.reset()
    metrics = runner.run(ipu_cfg(*WIRING, "ckpt_path=last", "throughput.enabled=false"), resumed)
    assert not fake.calls("trainingModel")  # nothing left to train: both phases came from their files
    assert metrics["epochs"] == 1 and metrics["finetune_epochs"] == 1 and (resumed / "checkpoints/finetune.pt").exists()


def test_smoke_run(fake, smoke, tmp_path):
    """The IPU smoke run (one run, shared by these checks in one test: as separate tests, pytest-xdist's two
    workers would each make it, 35 s apiece)."""
    _check_metrics_contract(smoke)
    _check_train_loss_covers_every_micro_batch(smoke)
    _check_ema_from_fp32_weights(smoke)
    _check_resume_last(fake, smoke, tmp_path)  # last: it resets the fake's record of calls


THREE_IPUS = "ipu.pipeline=[{layer:blocks.3,ipu:1},{layer:conv_head,ipu:2}]"


@pytest.mark.parametrize("overrides, match", [
    (["batch_size=10", "ipu.replication_factor=4"], r"batch_size=10 .*ipu\.replication_factor=4"),
    (["ipu.device_iterations=0"], r"ipu\.device_iterations=0"),
    (["ipu.eval_batch_size=0"], r"ipu\.eval_batch_size=0 is invalid; allowed: a positive integer"),
    (["ipu.available_memory_proportion=1.5"], r"available_memory_proportion=1\.5"),
    (["ema.every=step"], r"ema\.every='step'"),
    (["trainer.accumulate_grad_batches=2"], r"ipu\.gradient_accumulation"),
    (["optimizer.name=adamw"], r"optimizer\.name='adamw'.*rmsproptf"),
    (["ipu.pipeline=[{layer:blocks.99,ipu:1}]"], r"blocks\.99.*conv_head"),
    (["ipu.pipeline=[{layer:conv_head,ipu:-1}]"], r"ipu\.pipeline\[0\]\.ipu"),
    # the IPU count: 3 per replica, or 3 replicas, is no power of 2
    ([THREE_IPUS, "ipu.gradient_accumulation=5", "batch_size=40"],
     r"ipu\.replication_factor=1 x 3 IPU\(s\) per replica .* = 3 IPUs.*power of 2.*auto_round_num_ipus"),
    (["ipu.replication_factor=3", "batch_size=30"], r"ipu\.replication_factor=3 x 1 IPU\(s\).*power of 2"),
    # a 2-IPU pipeline trains with accumulation >= 3 and infers with device iterations >= 2
    (["ipu.pipeline=[{layer:blocks.3,ipu:1}]"], r"ipu\.gradient_accumulation=1: .* 2 IPUs.*>= 2 x 2 - 1 = 3"),
    (["ipu.pipeline=[{layer:blocks.3,ipu:1}]", "ipu.gradient_accumulation=4", "ipu.eval_device_iterations=1"],
     r"ipu\.eval_device_iterations=1: .* 2 IPUs.*>= 2"),
    # listed in order, but conv_head runs after blocks.3: IPU ids fall in execution order
    (["ipu.pipeline=[{layer:conv_head,ipu:1},{layer:blocks.3,ipu:2}]", "ipu.gradient_accumulation=8"],
     r"ipu\.pipeline\[0\]\.ipu=1 \(conv_head\) runs after blocks\.3 on IPU 2.*rise"),
])
def test_config_errors_before_any_work(fake, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        runner.run(ipu_cfg(*overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_pipeline_rules_accepted(fake, tmp_path):
    """The README/conf example builds; a 3-IPU pipeline builds when auto-rounding to 4 IPUs is asked for."""
    assert IPUBackend(ipu_cfg("ipu.pipeline=[{layer:blocks.4,ipu:1}]", "ipu.gradient_accumulation=4"),
                      tmp_path).num_ipus == 2
    assert IPUBackend(ipu_cfg(THREE_IPUS, "ipu.gradient_accumulation=8", "ipu.auto_round_num_ipus=true"),
                      tmp_path).num_ipus == 3
