"""A resumed run continues where it stopped: from the epoch after its last checkpoint, with that checkpoint's
optimizer state, learning-rate schedule and weight average. A silent restart from epoch 0 fails every check."""

import signal

import pytest
import torch

from g16net.backends.lit_module import LitClassifier
from g16net.core.run_safety import RunStopped
from g16net.run.runner import run

from .conftest import TINY, compose_cfg, read_metrics

# 3 epochs of 2 steps (16 images, batch 8), nothing after training: seconds per run.
ARGS = [*TINY, "epochs=3", "batch_size=8", "eval_batch_size=16", "data.synthetic.train_size=16",
        "data.synthetic.val_size=16", "trainer.limit_val_batches=1", "finetune.epochs=0",
        "eval.before_finetune=false", "throughput.enabled=false", "eval.resolutions=[32]"]
STEPS_PER_EPOCH = 2
TRAINING_STEP, ON_TRAIN_START = LitClassifier.training_step, LitClassifier.on_train_start


class Probe:
    """Records each training step's (epoch, global step, LR) and the state a phase starts from; stops the run (as
    SIGINT does) at the first step of `stop_epoch`. Installing one replaces the one before."""

    def __init__(self, stop_epoch=None):
        self.stop_epoch, self.steps, self.start = stop_epoch, [], None

    def install(self, monkeypatch):
        probe = self

        def training_step(lit, batch, batch_idx):
            probe.steps.append((lit.current_epoch, lit.global_step, lit.optimizers().param_groups[0]["lr"]))
            if lit.current_epoch == probe.stop_epoch:
                raise RunStopped(signal.SIGINT)
            return TRAINING_STEP(lit, batch, batch_idx)

        def on_train_start(lit):
            ON_TRAIN_START(lit)
            opt = lit.optimizers().optimizer
            probe.start = dict(epoch=lit.current_epoch, step=lit.global_step, lr=opt.param_groups[0]["lr"],
                               optimizer=_clone(opt.state_dict()["state"]),
                               ema={k: v.clone() for k, v in lit.ema.module.state_dict().items()})

        monkeypatch.setattr(LitClassifier, "training_step", training_step)
        monkeypatch.setattr(LitClassifier, "on_train_start", on_train_start)
        return self


def _clone(state):
    return {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in state.items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_a_resumed_run_continues_the_stopped_epoch_with_its_optimizer_schedule_and_average(tmp_path, monkeypatch):
    cfg = compose_cfg(ARGS)
    stopped = Probe(stop_epoch=2).install(monkeypatch)
    with pytest.raises(RunStopped):
        run(cfg, tmp_path, hydra_files={"config.yaml": cfg})
    ckpt = torch.load(tmp_path / "checkpoints" / "train" / "last.ckpt", map_location="cpu", weights_only=False)
    done = 2 * STEPS_PER_EPOCH
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, done)  # epochs 0 and 1 finished, epoch 2 stopped at once
    lr_at_stop = stopped.steps[-1]
    assert lr_at_stop[:2] == (2, done) and lr_at_stop[2] != stopped.steps[0][2]  # the schedule has moved by then

    resumed = Probe().install(monkeypatch)
    run(compose_cfg([*ARGS, "ckpt_path=last"]), tmp_path)
    start = resumed.start
    assert (start["epoch"], start["step"]) == (2, done)
    assert [s[:2] for s in resumed.steps] == [(2, done + i) for i in range(STEPS_PER_EPOCH)]  # epoch 2 only
    assert resumed.steps[0][2] == lr_at_stop[2]  # the LR the stopped run was about to train with
    saved_opt = ckpt["optimizer_states"][0]["state"]
    assert saved_opt and saved_opt.keys() == start["optimizer"].keys()  # RMSprop's averages, not a fresh optimizer
    assert all(_same(saved_opt[i], start["optimizer"][i]) for i in saved_opt)
    saved_ema = {k.removeprefix("ema.module."): v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    saved_model = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert _same(saved_ema, start["ema"]) and not _same(saved_model, start["ema"])  # the average, not the weights
    m = read_metrics(tmp_path)
    assert m["status"] == "complete" and m["epochs"] == 3
