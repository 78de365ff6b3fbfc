"""One Lightning phase of training (the from-scratch training, or the native-resolution head finetuning).

The loop, precision, DDP, checkpointing and logging are Lightning's; this module only adds what the recipe needs:
uint8 batches normalized on the device (the host ships 4x fewer bytes), Mixup/CutMix, a stop on a non-finite loss,
a per-epoch weight average, head-only finetuning, and top-1/top-5 at several test resolutions in one pass.
"""

import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from ..core.recipe import build_ema, build_optimizer, build_scheduler
from .on_device import Normalize, eval_metrics, scores

# Eval-mode modules at fit start are by design here (the weight-average copy always; the frozen backbone while
# finetuning), and Lightning keeps each module's mode, so its warning about them would only alarm users.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def freeze_all_but_head(model: nn.Module, recalibrate_bn: bool = False) -> None:
    """Head-only finetuning: the head 1x1 conv, its norm (and Proxy Norm) and the classifier train; with
    `recalibrate_bn` (FixRes for BN models) every BatchNorm layer trains too."""
    model.requires_grad_(False)
    for m in model.head_modules():
        m.requires_grad_(True)
    for m in _batchnorms(model) if recalibrate_bn else ():
        m.requires_grad_(True)


def finetune_modes(model: nn.Module, recalibrate_bn: bool = False, dropout: bool = False) -> None:
    """Every layer in eval mode (no stochastic depth, fixed norm statistics) but BN layers re-estimating their
    statistics if `recalibrate_bn`; head dropout iff `dropout`: the model's own mode switches it (`forward_head`)."""
    model.train(dropout)
    for child in model.children():
        child.eval()
    for m in _batchnorms(model) if recalibrate_bn else ():
        m.train()


def _batchnorms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class NonFiniteLossError(FloatingPointError):
    """Raised inside the training step so Lightning stops before any checkpoint of the broken state is written."""


class LitClassifier(pl.LightningModule):
    def __init__(
        self, model: nn.Module, *, mean, std, label_smoothing: float = 0.1, optimizer_cfg=None, scheduler_cfg=None,
        lr: float = 1e-3, epochs: int = 1, mixup=None, ema_cfg=None,
        trainable: str = "all", recalibrate_bn: bool = False, head_dropout: bool = True,
        channels_last: bool = False, compile: bool = False, eval_resolutions=(), num_classes: int | None = None,
    ):
        """Validation dataloader i is evaluated at eval_resolutions[i]; results land in `eval_results`."""
        super().__init__()
        self.model = model
        self.normalize = Normalize(mean, std)
        self.label_smoothing, self.mixup = label_smoothing, mixup
        self.optimizer_cfg, self.scheduler_cfg, self.lr = optimizer_cfg, scheduler_cfg, lr
        self.epochs = epochs
        self.trainable, self.recalibrate_bn, self.head_dropout = trainable, recalibrate_bn, head_dropout
        self.channels_last = channels_last
        self.ema_every = ema_cfg.every if ema_cfg is not None and ema_cfg.enabled else None
        self.ema = None
        if self.ema_every:
            self.ema_decay_per_epoch = ema_cfg.decay
            self.ema = build_ema(model, ema_cfg)
        if trainable == "head":
            freeze_all_but_head(model, recalibrate_bn)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Kept off the module tree so checkpoints hold the plain model's keys (loadable without compile).
        object.__setattr__(self, "_forward", torch.compile(self.model) if compile else self.model)
        self.eval_resolutions = list(eval_resolutions)
        self.eval_results: dict[int, dict] = {}
        self._metrics = nn.ModuleList(eval_metrics(num_classes) for _ in self.eval_resolutions)

    # ---- inputs -------------------------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # the module's dtype (fp32 unless .double()/.half())
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    # ---- training -----------------------------------------------------------------------------------------------
    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.mixup is not None:
            x, soft = self.mixup(x, y)
            return SoftTargetCrossEntropy()(self(x), soft)
        return F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(*batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}, "
                f"learning rate {self.optimizers().param_groups[0]['lr']:.4g}; the run is stopped (checkpoints of "
                "earlier epochs are kept). Lower optimizer.lr / optimizer.lr_per_sample or check the data.")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self):
        if self.trainable == "head":
            finetune_modes(self.model, self.recalibrate_bn, self.head_dropout)

    def on_train_start(self):
        if self.ema_every == "step":  # the configured decay is per epoch: spread it over the epoch's steps
            steps = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
            self.ema.decay = self.ema_decay_per_epoch ** (1.0 / steps)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema_every == "step":
            self.ema.update(self.model, step=self.global_step)

    def on_train_epoch_end(self):
        if self.ema_every == "epoch":
            self.ema.update(self.model, step=self.current_epoch + 1)

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.optimizer_cfg, self.lr)
        # Lightning's count already reflects DDP sharding, gradient accumulation and batch limits.
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        sched = build_scheduler(opt, self.scheduler_cfg, steps_per_epoch, self.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers count optimizer updates

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        logits = self(self.prepare(x))
        self._metrics[dataloader_idx].update(logits, y)

    def on_validation_epoch_end(self):
        self.eval_results = {}
        for res, metrics in zip(self.eval_resolutions, self._metrics):
            self.eval_results[res] = out = scores(metrics)
            for k, v in out.items():
                self.log(f"val/{k}@{res}", v, prog_bar=k == "top1", sync_dist=False, add_dataloader_idx=False)
