"""backend=ipu (g16net.backends.ipu) against a recording fake of PopTorch (tests/fake_poptorch.py).

These tests check WIRING: that the backend calls the PopTorch API with the values the config asks for (Options,
optimizer, pipeline splits, data loaders, executors), completes a tiny job and writes the usual metrics.json, and
fails early with clear errors. The fake enforces the compiler's pipeline / IPU-count rules and PopTorch's output
modes, but runs the model eagerly on the CPU, so nothing here says anything about IPU numerics (fp16, loss scaling,
TF-style RMSprop, stochastic rounding), memory or speed.
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

import g16net.backends.ipu as ipu_backend
import g16net.runner as runner
from g16net.config import ConfigError

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
        mp.setattr(ipu_backend, "ModelEmaV3", OldTimmEma)
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
    assert metrics["throughput_protocol"]["ipus_per_replica"] == 2
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
    # training executables (train, finetune, training throughput) then inference ones: their own iterations
    n_train, n_opts = 3, len(_calls(rec, "Options"))
    assert sorted(kw["device_iterations"] for kw in _calls(rec, "Options.deviceIterations")) == \
        [2] * n_train + [3] * (n_opts - n_train)
    assert {kw["random_seed"] for kw in _calls(rec, "Options.randomSeed")} == {0}
    assert [kw["gradient_accumulation"] for kw in _calls(rec, "Training.gradientAccumulation")] == [3] * n_train
    assert len(_calls(rec, "Precision.enableStochasticRounding")) == n_train
    assert [kw["output_mode"] for kw in _calls(rec, "Options.outputMode")] == [fake_poptorch.OutputMode.Sum] * n_train
    assert [kw["dtype"] for kw in _calls(rec, "Precision.setPartialsType")] == [torch.float16] * n_opts
    amp = {"IPU0": 0.3, "IPU1": 0.3}  # one entry per IPU of the 2-IPU pipeline
    assert [kw["available_memory_proportion"] for kw in _calls(rec, "Options.setAvailableMemoryProportion")] == \
        [amp] * n_opts
    assert {kw["path"] for kw in _calls(rec, "Options.enableExecutableCaching")} == {str(run_dir / "cache")}
    # throughput: the training step + one inference per test resolution
    assert len(_calls(rec, "Options.enableSyntheticData")) == 1 + len(metrics["eval"])
    loaders = _calls(rec, "DataLoader")
    train = [(d["batch_size"], d["combined"], d["drop_last"]) for d in loaders if d["shuffle"]]
    assert train == [(2, 24, True)] * 2  # train + finetune: micro-batch 2 x 2 iterations x 2 replicas x 3 acc.
    evals = {(d["batch_size"], d["combined"]) for d in loaders if not d["shuffle"]}
    assert evals == {(2, 12)} and len(loaders) == 2 + 2 * len(metrics["eval"])  # eval: 2 x 3 iterations x 2


def test_smoke_train_loss_covers_every_micro_batch(smoke):
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


def test_smoke_ema_from_fp32_weights(smoke):
    """ipu.half=true compiles fp16 weights; the average (an older timm's strict one) was still updated each epoch."""
    metrics, _, _ = smoke
    assert OldTimmEma.updates >= metrics["epochs"]
    with pytest.raises(RuntimeError):  # what the backend avoids: fp16 weights into the fp32 average
        OldTimmEma(torch.nn.Linear(2, 2)).update(torch.nn.Linear(2, 2).half(), step=1)


def test_smoke_optimizers_and_precision(smoke):
    _, _, rec = smoke
    rms, ft_rms = _calls(rec, "optim.RMSprop")[:2]  # training, then the head finetuning (the authors' optimizer)
    for r in (rms, ft_rms):
        assert r["use_tf_variant"] is True and r["loss_scaling"] == 128
        assert r["accum_types"] == (torch.float32,) * 3 and r["eps"] == 1e-3 and r["momentum"] == 0.9
    assert rms["alpha"] == pytest.approx(1 - 768 / 16384)  # the paper's 21-step average at batches <= 768
    assert ft_rms["alpha"] == pytest.approx(1 - 512 / 16384)  # its finetuning's, at batches <= 512
    train, finetune, bench = _calls(rec, "trainingModel")
    assert train["optimizer"] is not finetune["optimizer"]
    for t in (train, finetune, bench):
        assert t["dtypes"] == {torch.float16}  # ipu.half: the compiled copy is fp16
    assert train["trainable"] == train["total"] and 0 < finetune["trainable"] < finetune["total"]  # head only
    assert all(kw["dtypes"] == {torch.float16} and not kw["training_mode"] for kw in _calls(rec, "inferenceModel"))
    assert {kw["reduction"] for kw in _calls(rec, "identity_loss")} == {"mean"}
    assert _calls(rec, "setOptimizer")  # the LR schedule reaches the device
    assert all(c["batch"] % 12 == 0 for c in _calls(rec, "call"))


def test_smoke_pipeline_blocks(smoke):
    _, _, rec = smoke
    model = _calls(rec, "trainingModel")[0]["model"].model
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [(names.get(id(kw["layer"])), kw["ipu_id"]) for kw in _calls(rec, "BeginBlock")]
    assert blocks[0] == ("blocks.3", 1) and {b[1] for b in blocks} == {1}


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


THREE_IPUS = "ipu.pipeline=[{layer:blocks.3,ipu:1},{layer:conv_head,ipu:2}]"


@pytest.mark.parametrize("overrides, match", [
    (["batch_size=10", "ipu.replication_factor=4"], r"batch_size=10 .*ipu\.replication_factor=4"),
    (["ipu.device_iterations=0"], r"ipu\.device_iterations=0"),
    (["ipu.eval_batch_size=0"], r"ipu\.eval_batch_size=0 must be null or an integer >= 1"),
    (["ipu.available_memory_proportion=1.5"], r"available_memory_proportion=1\.5"),
    (["ema.every=step"], r"ema\.every='step'"),
    (["trainer.accumulate_grad_batches=2"], r"ipu\.gradient_accumulation"),
    (["optimizer.name=adamw"], r"optimizer\.name='adamw'.*rmsproptf"),
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
def test_config_errors_before_any_work(fake, monkeypatch, tmp_path, overrides, match):
    def no_data(*a, **k):
        raise AssertionError("data was built before the IPU config was checked")

    monkeypatch.setattr(runner, "build_data", no_data)
    with pytest.raises(ConfigError, match=match):
        runner.make_job(ipu_cfg(*overrides), tmp_path)


def test_pipeline_rules_accepted(fake, tmp_path):
    """The README/conf example builds; a 3-IPU pipeline builds when auto-rounding to 4 IPUs is asked for; a
    pipelined job without eval_device_iterations gets the pipeline depth."""
    job = runner.make_job(ipu_cfg("ipu.pipeline=[{layer:blocks.4,ipu:1}]", "ipu.gradient_accumulation=4"), tmp_path)
    assert job.num_ipus == 2 and job.eval_iterations == 2
    job = runner.make_job(ipu_cfg(THREE_IPUS, "ipu.gradient_accumulation=8", "ipu.auto_round_num_ipus=true"),
                          tmp_path)
    fake.reset()
    job.options(training=False)
    assert job.num_ipus == 3 and fake.calls("Options.autoRoundNumIPUs") == [{"auto_round_num_ipus": True}]


class _Pipe(torch.nn.Module):
    def __init__(self, ids):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))
        for layer, ipu in zip(self.layers[1:], ids):
            fake_poptorch.BeginBlock(layer, ipu_id=ipu)

    def forward(self, x, y=None):
        for layer in self.layers:
            x = layer(x)
        return x if y is None else (x, fake_poptorch.identity_loss(((x - y) ** 2).mean(), reduction="mean"))


@pytest.mark.parametrize("ids, training, opts, match", [
    ([1, 2], False, dict(device_iterations=3), r"3 IPUs, which is not a power of 2"),
    ([], True, dict(replication_factor=3), r"3 IPUs"),
    ([2, 1], False, dict(device_iterations=4), r"must not decrease"),
    ([1, 1], True, dict(gradient_accumulation=2), r"at least 3 for 2 IPUs"),
    ([1, 1], False, dict(device_iterations=1), r"deviceIterations >= 2"),
])
def test_fake_compiler_rejects_what_poptorch_does(ids, training, opts, match):
    """The fake refuses these on the first call, so a backend regression that slips past the config checks fails."""
    o = fake_poptorch.Options()
    o.deviceIterations(opts.get("device_iterations", 1)).replicationFactor(opts.get("replication_factor", 1))
    if training:
        o.Training.gradientAccumulation(opts.get("gradient_accumulation", 1))
    model = _Pipe(ids)
    run = fake_poptorch.trainingModel(model, o, torch.optim.SGD(model.parameters(), lr=0.1)) if training else \
        fake_poptorch.inferenceModel(model, o)
    n = o.device_iterations * o.replication_factor * o.Training.gradient_accumulation
    with pytest.raises(fake_poptorch.Error, match=match):
        run(torch.zeros(n, 2), torch.zeros(n, 2)) if training else run(torch.zeros(n, 2))
    o.autoRoundNumIPUs(True)
    if match.startswith("3 IPUs"):  # what auto-rounding allows
        fake_poptorch.inferenceModel(_Pipe(ids), o)(torch.zeros(n, 2))


def test_training_output_modes():
    """Final (PopTorch's training default) returns each replica's last micro-batch loss; Sum their sum."""
    losses = {}
    for mode in (fake_poptorch.OutputMode.Final, fake_poptorch.OutputMode.Sum):
        torch.manual_seed(0)
        model = _Pipe([])
        o = fake_poptorch.Options().replicationFactor(2).outputMode(mode)
        o.Training.gradientAccumulation(2)
        run = fake_poptorch.trainingModel(model, o, torch.optim.SGD(model.parameters(), lr=0.0))
        _, losses[mode] = run(torch.arange(8.0).view(4, 2), torch.zeros(4, 2))
    per_micro = torch.tensor(fake_poptorch.calls("call")[-1]["micro_losses"])  # [accumulation, replica]
    assert torch.allclose(losses[fake_poptorch.OutputMode.Final], per_micro.view(2, 2)[-1])
    assert torch.allclose(losses[fake_poptorch.OutputMode.Sum], per_micro.view(2, 2).sum(0))


def test_options_keep_the_host_data_order(fake, tmp_path):
    """randomSeed reseeds torch on the host (PopTorch does, the fake too); building options must not reset the
    generator the data order comes from."""
    job = runner.make_job(ipu_cfg(), tmp_path)
    torch.manual_seed(123)
    torch.rand(3)
    state = torch.get_rng_state()
    for training in (True, False):
        job.options(training=training)
        job.options(training=training, synthetic=True)
    assert torch.equal(torch.get_rng_state(), state)
    fake.Options().randomSeed(0)  # the reseeding the backend shields the host from
    assert not torch.equal(torch.get_rng_state(), state)


def test_fp32_option(fake, tmp_path):
    """half=false: no stochastic rounding, and half_partials (default true) is not applied to fp32 convolutions."""
    job = runner.make_job(ipu_cfg("ipu.half=false"), tmp_path)
    fake.reset()
    job.options(training=True)
    assert not fake.calls("Precision.enableStochasticRounding") and not fake.calls("Precision.setPartialsType")
    from g16net.models import create_model

    assert {p.dtype for p in job._device_copy(create_model("b0", num_classes=10)).parameters()} == {torch.float32}
