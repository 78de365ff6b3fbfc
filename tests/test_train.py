"""The main job end to end on tiny inputs: phases, metrics.json contract, presets, resume, real image folders,
and the errors a user hits before training starts."""

import json
import signal

import pytest
import torch
from timm.layers import DropPath

import g16net
from g16net.backends.lit_module import LitClassifier, NonFiniteLossError, finetune_modes
from g16net.checks.config_check import check_config
from g16net.core.config import ConfigError
from g16net.core.recipe import SHORT_RUN_LR_PER_SAMPLE
from g16net.core.run_safety import RunDirRefused
from g16net.efficiency.measure import count_params
from g16net.run.runner import run

from .conftest import TINY, compose_cfg, image_tree, plan_of, read_metrics, run_cli, start_and_signal

CONTRACT = ("params", "train_resolution", "train_macs", "train_throughput", "eval")
EVAL_CONTRACT = ("resolution", "top1", "macs", "infer_throughput")


def _assert_contract(m):
    assert m["status"] == "complete"
    for key in CONTRACT:
        assert key in m, key
    assert m["eval"] and all(all(k in r for k in EVAL_CONTRACT) for r in m["eval"])
    assert m["config"]["model"]["size"] == m["model"]["size"]


def test_main_job_cli_writes_the_contract(smoke_run):
    tmp_path = smoke_run
    m = read_metrics(tmp_path)
    _assert_contract(m)
    assert (m["schedule"], m["finetuned"], m["train_resolution"], m["headline_resolution"]) == ("half", True, 32, 64)
    assert [r["resolution"] for r in m["eval"]] == [32, 64]
    assert [r["resolution"] for r in m["eval_before_finetune"]] == [32, 64]
    assert m["eval"][1]["macs"] > 3.5 * m["eval"][0]["macs"]  # ~4x the pixels
    assert m["train_throughput"] > 0 and m["params"] == count_params(
        g16net.create_model(norm="ln_pn", num_classes=10))
    assert (tmp_path / ".hydra" / "config.yaml").exists()  # the resolved config is saved with the run
    for phase in ("train", "finetune"):
        assert (tmp_path / "checkpoints" / f"{phase}.pt").exists()
        assert (tmp_path / "logs" / phase / "metrics.csv").exists()


@pytest.mark.parametrize("lr", [None, "optimizer.lr_per_sample=3.0517578125e-05"])
def test_a_run_with_few_updates_says_how_many_epochs_reach_the_measured_budget(tmp_path, capsys, lr):
    """At the recipe's own LR only: a preset that set its LR for its length (norm_ablation_cpu) gets no note."""
    assert compose_cfg([]).optimizer.lr_per_sample == SHORT_RUN_LR_PER_SAMPLE  # the LR the note is about
    run(compose_cfg([*TINY, "trainer.limit_train_batches=1.0", "data.synthetic.train_size=64", "batch_size=16",
                     "epochs=2", "finetune.epochs=0", "eval.before_finetune=false", "throughput.enabled=false",
                     "eval.resolutions=[32]", *([lr] if lr else [])]), tmp_path)
    out = capsys.readouterr().out
    if lr:
        assert "note:" not in out and "== train: 2 epoch(s)" in out
        return
    assert "note: 8 training updates; the short-run recipe was measured at 1000" in out  # 64 / 16 x 2 epochs
    assert "epochs=250 gives that many" in out


@pytest.mark.parametrize("norm", ["ln_pn", "bn"])
def test_gradient_accumulation_equals_one_large_batch(norm):
    """4 micro-batches of 4 vs one batch of 16, through the training module's own loss, in float64. Tolerance:
    1e-10 relative to the largest gradient entry (only summation order differs). BatchNorm misses it by 8+ orders."""
    torch.manual_seed(0)
    model = g16net.create_model(norm=norm, num_classes=10, drop_rate=0.0, drop_path_rate=0.0)
    lit = LitClassifier(model, mean=(0.5,) * 3, std=(0.25,) * 3, label_smoothing=0.1).double()
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))

    def grads(chunks):
        model.zero_grad()
        for xs, ys in zip(x.chunk(chunks), y.chunk(chunks)):
            (lit.compute_loss(xs, ys) / chunks).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    whole, accumulated = grads(1), grads(4)
    error = (whole - accumulated).abs().max() / whole.abs().max()
    if norm == "bn":
        assert error > 1e-2
    else:
        assert error < 1e-10


@pytest.mark.parametrize("dropout", [True, False])
def test_finetune_modes_switch_only_the_head_dropout(dropout):
    """Finetuning: every layer in eval mode (BN recalibrating if asked), head dropout iff `dropout`."""
    model = g16net.create_model(norm="bn", num_classes=10, drop_rate=0.5)
    finetune_modes(model, recalibrate_bn=True, dropout=dropout)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training for m in bns) and model.training == dropout
    assert not any(m.training for m in model.modules() if isinstance(m, DropPath))  # no stochastic depth
    for m in bns:  # fixed statistics, so only dropout can make two passes differ
        m.train(False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x)) != dropout


def test_imagefolder_end_to_end(tmp_path):
    root = image_tree(tmp_path / "data")
    out = tmp_path / "run"
    run_cli([*TINY, "data=imagefolder", f"data.root={root}", "data.native_resolution=64", "data.half_resolution=32",
             "data.num_workers=0", f"hydra.run.dir={out}"])
    m = read_metrics(out)
    _assert_contract(m)
    assert (m["dataset"], m["num_classes"]) == ("imagefolder", 3)


def test_resume_after_kill(tmp_path):
    """Kill the job (SIGKILL) once the first training epoch's checkpoint exists, resume with ckpt_path=last in the
    same run dir, and end with every epoch done and a complete metrics.json."""
    # 15 batches per epoch: long enough (seconds) to kill the job between two epochs' checkpoints.
    args = [*TINY, "epochs=2", "trainer.limit_train_batches=15", "finetune.epochs=1"]
    last = tmp_path / "checkpoints" / "train" / "last.ckpt"
    # Lightning writes checkpoints to a temp file and renames: never half-written
    start_and_signal([*args, f"hydra.run.dir={tmp_path}"], last, signal.SIGKILL)
    assert last.exists() and not (tmp_path / "metrics.json").exists()
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert epoch_at_kill < 2
    with pytest.raises(RunDirRefused, match="ckpt_path=last"):  # a fresh start would clobber it: refused
        run(compose_cfg(args), tmp_path)
    run(compose_cfg([*args, "ckpt_path=last"]), tmp_path)  # in this process: the kill is what needed a child
    m = read_metrics(tmp_path)
    _assert_contract(m)
    assert (m["epochs"], m["finetune_epochs"]) == (2, 1)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = LitClassifier.compute_loss

    def poisoned(self, x, y):
        loss = real(self, x, y)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(LitClassifier, "compute_loss", poisoned)
    cfg = compose_cfg([*TINY, "epochs=3"])
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* epoch 1"):
        run(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "train" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("overrides, message", [
    (["model.size=b9"], "size='b9' is invalid; allowed: b0"),
    (["model.group_size=12"], "group_size=12 cannot divide"),
    (["resolution.schedule=quarter"], "resolution.schedule='quarter' is invalid; allowed: half, native"),
    (["epochs=0"], "epochs=0 is invalid; allowed: a positive integer"),
    (["resolution.train=128"], "train resolution 128 is above the test resolution 64"),
    (["data=imagefolder", "data.root=/nonexistent/data", "data.native_resolution=64", "data.half_resolution=32"],
     "/nonexistent/data"),
    (["augment.mixup_alpha=-1"], "augment.mixup_alpha=-1"),
    (["data.test_resolutions=[0]"], r"data.test_resolutions=\[0\] is invalid"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt' is invalid; allowed: last"),
])
def test_bad_config_fails_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):  # exits 2; a plain ValueError or OSError would exit 1
        run(compose_cfg([*TINY, *overrides]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_train_above_test_resolution_runs_when_allowed():
    cfg = compose_cfg([*TINY, "resolution.train=128", "resolution.allow_train_above_test=true"])
    check_config(cfg)
    assert (plan_of(cfg).train_res, plan_of(cfg).finetune_res) == (128, 64)  # refused without the switch (above)


def test_training_mixup_batch_fails_before_training_and_the_named_switch_works(tmp_path):
    one = [*TINY, "batch_size=1", "finetune.batch_size=2"]  # Mixup pairs samples within a device batch
    with pytest.raises(ConfigError, match=r"^augment: Mixup/CutMix needs a per-device batch of 2 or more, got 1.*"
                                          r"augment\.mixup_alpha=0 augment\.cutmix_lambda=null"):
        run(compose_cfg(one), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    assert plan_of(compose_cfg([*one, "augment.mixup_alpha=0", "augment.cutmix_lambda=null"])).batch == 1


def test_cli_errors_are_clear_and_early(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli([*TINY, "data=imagefolder", f"data.root={empty}", "data.native_resolution=64",
                    "data.half_resolution=32", f"hydra.run.dir={tmp_path / 'r1'}"], check=False)
    assert proc.returncode == 2 and str(empty) in proc.stderr + proc.stdout
    assert json.loads((tmp_path / "r1" / "error.json").read_text())["status"] == "failed"
    proc = run_cli([*TINY, "norm=batchnorm", f"hydra.run.dir={tmp_path / 'r2'}"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "norm=batchnorm is not allowed; allowed: bn, evos0, gn, gn_pn, in, ln, ln_pn, ln_ws" in proc.stderr
    assert not (tmp_path / "r2").exists()


def test_corrupt_image_is_named_before_training(tmp_path):
    root = image_tree(tmp_path / "data")
    bad = root / "train" / "class_1" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    cfg = compose_cfg([*TINY, "data=imagefolder", f"data.root={root}", "data.native_resolution=64",
                       "data.half_resolution=32", "data.num_workers=0"])
    with pytest.raises(ConfigError, match="3.png"):  # exit 2, as every bad input; a plain ValueError would exit 1
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_compiled_model_checkpoints_load_into_a_plain_model():
    model = g16net.create_model(norm="ln_pn", num_classes=10)
    lit = LitClassifier(model, mean=(0.5,) * 3, std=(0.25,) * 3, compile=True)  # compiles lazily, on first call
    keys = list(lit.state_dict())
    assert keys and not any("_orig_mod" in k for k in keys)
    plain = g16net.create_model(norm="ln_pn", num_classes=10)
    plain.load_state_dict({k.removeprefix("model."): v for k, v in lit.state_dict().items()})


@pytest.mark.slow
def test_compiled_smoke_run(tmp_path):
    # Every phase compiled; one test resolution and no throughput pass, because each new input shape or mode
    # recompiles, which takes minutes on a 2-core CPU.
    run_cli([*TINY, "compile=true", "eval.resolutions=[64]", "eval.before_finetune=false",
             "throughput.enabled=false", f"hydra.run.dir={tmp_path}"], timeout=1500)
    m = read_metrics(tmp_path)
    _assert_contract(m)
    assert m["throughput_protocol"]["compile"] is True
