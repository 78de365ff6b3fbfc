"""backend=lightning (the default): CPU or GPU, one device or DDP over many, through Lightning's Trainer.

The `trainer` config section is passed to `pl.Trainer` as it is (any Trainer argument can be set there); only
`progress_bar` is ours, and accelerator/precision "auto" are resolved first.
"""

import logging
import signal
import sys
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..core.backend_api import Device, Fitted, Phase
from ..core.config import resolve_accelerator
from ..core.recipe import label_smoothing
from ..core.run_safety import RunStopped
from ..efficiency.measure import measure_throughput
from .callbacks import Bar, EpochLog, EvalPipelineThroughput, PipelineThroughput, PowerRecord
from .lit_module import LitClassifier

# Lightning's info lines (GPU/TPU available, the litmodels tip, "fit stopped") repeat for every phase's Trainer;
# its warnings go through `warnings` and stay visible.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning_fabric.utilities.rank_zero").setLevel(logging.WARNING)
APP_KEYS = ("progress_bar",)  # trainer section keys that are not pl.Trainer arguments
_PRECISION = {"32-true": "fp32", "64-true": "fp32", "bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16"}


@contextmanager
def _stops_as_run_stopped():
    """Lightning ends its loops with SIGTERMException, a SystemExit of status 0, when it alone saw SIGTERM (the
    signal landed where our handler's RunStopped was lost, e.g. while a checkpoint was written): a stop all the same."""
    try:
        yield
    except SIGTERMException:
        raise RunStopped(signal.SIGTERM) from None


class LightningBackend:
    def __init__(self, cfg: DictConfig, run_dir):
        self.cfg, self.run_dir = cfg, run_dir
        accelerator, precision = resolve_accelerator(cfg)
        args = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in APP_KEYS}
        if args.get("benchmark") == "auto":  # Lightning takes a bool; with deterministic kernels asked for, off
            args["benchmark"] = not args.get("deterministic")
        self.trainer_args = {**args, "accelerator": accelerator, "precision": precision}
        probe = pl.Trainer(**self.trainer_args, logger=False, enable_checkpointing=False)  # builds no process group
        steps = cfg.trainer.accumulate_grad_batches
        self.device = Device(accelerator, precision, probe.world_size, steps,
                             f"{probe.world_size} device(s) x {steps} accumulation steps", probe.is_global_zero)

    def trainer(self, epochs: int = 1, callbacks=(), logger=False) -> pl.Trainer:
        bar = self.cfg.trainer.progress_bar
        bar = sys.stderr.isatty() if bar == "auto" else bar  # a live bar only where someone watches
        callbacks = [*callbacks, Bar()] if bar else list(callbacks)
        return pl.Trainer(**self.trainer_args, max_epochs=epochs, enable_progress_bar=bar, enable_model_summary=False,
                          default_root_dir=self.run_dir, callbacks=callbacks, logger=logger,
                          enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                          num_sanity_val_steps=0)

    def loader(self, dataset, batch_size: int, train: bool) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
            pin_memory=self.device.accelerator != "cpu", persistent_workers=workers > 0 and train)

    def lit(self, model, stats, **kw) -> LitClassifier:
        mean, std = stats
        return LitClassifier(model, mean=mean, std=std, label_smoothing=label_smoothing(self.cfg),
                             channels_last=self.cfg.channels_last, compile=self.cfg.compile, **kw)

    def fit(self, model, phase: Phase, logger) -> Fitted:
        tput = PipelineThroughput()
        # One plain line per epoch (logs, SLURM .out files); last.ckpt rewritten after every epoch for resuming.
        callbacks = [_epoch_checkpoint(phase.ckpt_dir), tput, EpochLog(phase.name, on_epoch_end=phase.on_epoch_end)]
        if phase.diag_images is not None:
            callbacks.append(PowerRecord(phase.name, phase.diag_images, phase.stats, phase.diag_csv))
        trainer = self.trainer(phase.epochs, callbacks, logger)
        lit = self.lit(model, phase.stats, optimizer_cfg=phase.optimizer, scheduler_cfg=phase.scheduler, lr=phase.lr,
                       epochs=phase.epochs, mixup=phase.mixup, ema_cfg=phase.ema,
                       trainable="head" if phase.head_only else "all", recalibrate_bn=phase.recalibrate_bn,
                       head_dropout=phase.dropout, eval_resolutions=[phase.resolution], num_classes=phase.num_classes)
        with _stops_as_run_stopped():
            trainer.fit(lit, self.loader(phase.train_set, phase.batch, True),
                        self.loader(phase.val_set, self.cfg.eval_batch_size, False), ckpt_path=phase.resume)
        if lit.ema is not None:
            model.load_state_dict(lit.ema.module.state_dict())
        model.requires_grad_(True)
        return Fitted(trainer.current_epoch, tput.img_per_s * self.device.world_size)

    def evaluate(self, model, views, stats, num_classes: int, logger) -> list[dict]:
        """views: (resolution, val dataset) pairs, all evaluated in one Lightning validation pass."""
        res = [r for r, _ in views]
        lit = self.lit(model, stats, eval_resolutions=res, num_classes=num_classes)
        timer = EvalPipelineThroughput()
        loaders = [self.loader(ds, self.cfg.eval_batch_size, False) for _, ds in views]
        with _stops_as_run_stopped():
            self.trainer(callbacks=[timer], logger=logger).validate(lit, dataloaders=loaders, verbose=False)
        return [{"resolution": r, **lit.eval_results[r],
                 "infer_throughput_pipeline": timer.img_per_s(i) * self.device.world_size} for i, r in enumerate(res)]

    def protocol(self, batch: int) -> dict:
        t = self.cfg.throughput
        gpu = self.device.accelerator in ("gpu", "cuda")
        return dict(batch_size=batch, warmup_steps=t.warmup, timed_steps=t.steps,
                    precision=_PRECISION[self.device.precision], channels_last=bool(self.cfg.channels_last),
                    compile=bool(self.cfg.compile), device="cuda" if gpu else "cpu",
                    device_name=torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)")

    def throughput(self, model, proto: dict, train_res: int, test_res: list[int]) -> tuple[float, dict[int, float]]:
        """Model compute only (g16net.efficiency.measure's protocol)."""
        kw = dict(batch_size=proto["batch_size"], warmup=proto["warmup_steps"], steps=proto["timed_steps"],
                  precision=proto["precision"], channels_last=proto["channels_last"], compile=proto["compile"],
                  device=proto["device"])
        train = measure_throughput(model, train_res, mode="train", **kw).img_per_s
        return train, {r: measure_throughput(model, r, mode="infer", **kw).img_per_s for r in test_res}


def _epoch_checkpoint(dirpath) -> ModelCheckpoint:
    """`last.ckpt` rewritten (atomically) after every epoch. save_top_k=1 without a monitor keeps the newest
    checkpoint; with save_top_k=0 Lightning would write last.ckpt only when fit ends."""
    return ModelCheckpoint(dirpath=dirpath, filename="last", save_top_k=1, save_last=False,
                           enable_version_counter=False)
