"""backend=ipu (g16net.backends.ipu) against a recording fake of PopTorch (tests/fake_poptorch.py).

These tests check WIRING ONLY: that the backend calls the PopTorch API with the values the config asks for
(Options, optimizer, pipeline splits, data loaders, executors), completes a tiny job and writes the usual
metrics.json, and fails early with clear errors. The fake runs the model eagerly on the CPU, so nothing here says
anything about IPU numerics (fp16, loss scaling, TF-style RMSprop, stochastic rounding), compilation or speed.
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

import g16net.runner as runner
from g16net.config import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
import fake_poptorch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Small but with every split != 1: micro-batch 2 = 8 / (2 replicas x 2 accumulation), 2 device iterations.
WIRING = ["batch_size=8", "eval_batch_size=4", "ipu.replication_factor=2", "ipu.gradient_accumulation=2",
          "ipu.device_iterations=2", "ipu.available_memory_proportion=0.3", "ipu.half=true", "ipu.half_partials=true",
          "ipu.pipeline=[{layer:blocks.3,ipu:1},{layer:conv_head,ipu:2}]", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=1"]


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
    assert proc.returncode != 0
    assert "PopTorch" in out and "Poplar SDK" in out and "backend=lightning" in out, out[-2000:]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert "PopTorch" in json.loads((run_dir / "error.json").read_text())["error"]


def test_poptorch_checked_before_data(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "poptorch", None)  # makes `import poptorch` raise ImportError

    def no_data(*a, **k):
        raise AssertionError("data was built before PopTorch was checked")

    monkeypatch.setattr(runner, "build_data", no_data)
    with pytest.raises(ConfigError, match="PopTorch"):
        runner.make_job(ipu_cfg(), tmp_path)


def test_smoke_metrics_contract(smoke):
    metrics, run_dir, _ = smoke
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["model"]["name"] == "g16_efficientnet_b0" and metrics["params"] > 0
    data = metrics["config"]["data"]
    assert metrics["train_resolution"] == data["half_resolution"] and metrics["train_macs"] > 0
    assert metrics["train_throughput"] > 0 and metrics["train_throughput_pipeline"] > 0
    assert metrics["world_size"] == 2 and metrics["per_device_batch_size"] == 2 and metrics["precision"] == "16-true"
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


def test_smoke_options_match_config(smoke):
    metrics, run_dir, rec = smoke
    assert {kw["replication_factor"] for kw in _calls(rec, "Options.replicationFactor")} == {2}
    assert {kw["device_iterations"] for kw in _calls(rec, "Options.deviceIterations")} == {2}
    assert {kw["random_seed"] for kw in _calls(rec, "Options.randomSeed")} == {0}
    # training executables only: train, finetune, training throughput
    assert [kw["gradient_accumulation"] for kw in _calls(rec, "Training.gradientAccumulation")] == [2, 2, 2]
    assert len(_calls(rec, "Precision.enableStochasticRounding")) == 3
    n_opts = len(_calls(rec, "Options"))
    assert [kw["dtype"] for kw in _calls(rec, "Precision.setPartialsType")] == [torch.float16] * n_opts
    amp = {"IPU0": 0.3, "IPU1": 0.3, "IPU2": 0.3}  # one entry per IPU of the 3-stage pipeline
    assert [kw["available_memory_proportion"] for kw in _calls(rec, "Options.setAvailableMemoryProportion")] == \
        [amp] * n_opts
    assert {kw["path"] for kw in _calls(rec, "Options.enableExecutableCaching")} == {str(run_dir / "cache")}
    # throughput: the training step + one inference per test resolution
    assert len(_calls(rec, "Options.enableSyntheticData")) == 1 + len(metrics["eval"])
    loaders = _calls(rec, "DataLoader")
    train = [(d["batch_size"], d["combined"], d["drop_last"]) for d in loaders if d["shuffle"]]
    assert train == [(2, 16, True)] * 2  # train + finetune: micro-batch 2 x 2 iterations x 2 replicas x 2 acc.
    evals = {(d["batch_size"], d["combined"]) for d in loaders if not d["shuffle"]}
    assert evals == {(4, 16)} and len(loaders) == 2 + 2 * len(metrics["eval"])  # eval: 4 x 2 iterations x 2


def test_smoke_optimizers_and_precision(smoke):
    _, _, rec = smoke
    rms = _calls(rec, "optim.RMSprop")[0]
    assert rms["use_tf_variant"] is True and rms["loss_scaling"] == 128
    assert rms["accum_types"] == (torch.float32,) * 3 and rms["eps"] == 1e-3 and rms["momentum"] == 0.9
    assert rms["alpha"] == pytest.approx(1 - 8 / 16384)
    sgd = _calls(rec, "optim.SGD")[0]
    assert sgd["loss_scaling"] == 128 and sgd["nesterov"] is True and sgd["momentum"] == 0.9
    train, finetune, bench = _calls(rec, "trainingModel")
    assert train["optimizer"] is not finetune["optimizer"]
    for t in (train, finetune, bench):
        assert t["dtypes"] == {torch.float16}  # ipu.half: the compiled copy is fp16
    assert train["trainable"] == train["total"] and 0 < finetune["trainable"] < finetune["total"]  # head only
    assert all(kw["dtypes"] == {torch.float16} and not kw["training_mode"] for kw in _calls(rec, "inferenceModel"))
    assert {kw["reduction"] for kw in _calls(rec, "identity_loss")} == {"mean"}
    assert _calls(rec, "setOptimizer")  # the LR schedule reaches the device
    assert all(c["batch"] % 8 == 0 for c in _calls(rec, "call"))


def test_smoke_pipeline_blocks(smoke):
    _, _, rec = smoke
    model = _calls(rec, "trainingModel")[0]["model"].model
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [(names.get(id(kw["layer"])), kw["ipu_id"]) for kw in _calls(rec, "BeginBlock")]
    assert blocks[:2] == [("blocks.3", 1), ("conv_head", 2)]
    assert {b[1] for b in blocks} == {1, 2} and len(blocks) % 2 == 0


def test_resume_last(fake, smoke, tmp_path):
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


def test_bad_pipeline_layer(fake, tmp_path):
    with pytest.raises(ConfigError, match=r"blocks\.99.*conv_head"):
        runner.make_job(ipu_cfg("ipu.pipeline=[{layer:blocks.99,ipu:1}]"), tmp_path)
    with pytest.raises(ConfigError, match=r"ipu\.pipeline\[0\]\.ipu"):
        runner.make_job(ipu_cfg("ipu.pipeline=[{layer:conv_head,ipu:-1}]"), tmp_path)


@pytest.mark.parametrize("overrides, match", [
    (["batch_size=10", "ipu.replication_factor=4"], r"batch_size=10 .*ipu\.replication_factor=4"),
    (["ipu.device_iterations=0"], r"ipu\.device_iterations=0"),
    (["ipu.available_memory_proportion=1.5"], r"available_memory_proportion=1\.5"),
    (["ema.every=step"], r"ema\.every='step'"),
    (["trainer.accumulate_grad_batches=2"], r"ipu\.gradient_accumulation"),
    (["optimizer.name=adamw"], r"optimizer\.name='adamw'.*rmsproptf"),
])
def test_config_errors(fake, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        runner.make_job(ipu_cfg(*overrides), tmp_path)


def test_fp32_option(fake, tmp_path):
    job = runner.make_job(ipu_cfg("ipu.half=false", "ipu.half_partials=false"), tmp_path)
    fake.reset()
    job.options(training=True)
    assert not fake.calls("Precision.enableStochasticRounding") and not fake.calls("Precision.setPartialsType")
    from g16net.models import create_model

    assert {p.dtype for p in job._device_copy(create_model("b0", num_classes=10)).parameters()} == {torch.float32}
