"""The paper's training recipe, built from timm parts: RMSprop-TF, warmup + staircase decay, EMA; plus the authors'
own batch augmentation (CutMix "version 1" then per-sample Mixup on every batch), which timm does not have.

Only the choices specific to the paper are written here: which parameters get weight decay, the authors' CutMix and
Mixup samplers (their per-size strengths are in the size row, `g16net.models.SIZES`).
"""

import math

import torch
from omegaconf import OmegaConf
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from ..models import NORMS, check_size

_DECAYED = (nn.modules.conv._ConvNd, nn.Linear)
PAPER_EPOCHS = 350  # the run length the paper's time constants (warmup, LR decay period, weight average) are for
SHORT_RUN_LR_PER_SAMPLE = 2**-17  # conf/train.yaml's optimizer.lr_per_sample, the LR measured at SHORT_RUN_UPDATES
SHORT_RUN_UPDATES = 1000  # the main job's training updates (8 epochs x 125), where the short-run LR was measured


def time_scale(cfg) -> float:
    """The factor on the paper's time constants: `schedule_scale: auto` = epochs / 350, so a run of any length keeps
    the paper's shape (warmup over 1.4% of it, LR down to 1.2% of its peak at the end, average over its last ~10%)."""
    scale = cfg.schedule_scale
    return cfg.epochs / PAPER_EPOCHS if scale == "auto" else float(scale)


def regularization_scale(cfg) -> float:
    """The factor on the paper's regularization (Mixup, CutMix's cut rate, label smoothing, dropout, stochastic
    depth), which is sized for 350 epochs: `regularization_scale` as given, or `auto` = min(1, epochs / 350)."""
    scale = cfg.get("regularization_scale", 1)
    return min(1.0, cfg.epochs / PAPER_EPOCHS) if scale == "auto" else float(scale)


def label_smoothing(cfg) -> float:
    return cfg.loss.label_smoothing * regularization_scale(cfg)


def scaled_schedule(scheduler_cfg, ema_cfg, scale: float):
    """The scheduler and weight-average sections for a run `scale` times the paper's length: warmup and decay period
    multiplied by `scale`; the average's decay per epoch (given per paper epoch) raised to 1 / scale."""
    scheduler = OmegaConf.merge(scheduler_cfg, {"warmup_epochs": scheduler_cfg.warmup_epochs * scale,
                                                "decay_epochs": scheduler_cfg.decay_epochs * scale})
    return scheduler, OmegaConf.merge(ema_cfg, {"decay": ema_cfg.decay ** (1.0 / scale)})


def rmsprop_decay(alpha: float | None, batch: int, paper_batch: int) -> float:
    """RMSprop's decay rho: as given, or the paper's 1 - batch / 16384 (a 16384-sample average) from the paper's batch
    up; at smaller batches the paper's number of steps, 16384 / paper_batch, so the start-up of the average (it starts
    at 1, far above any squared gradient) ends within the warmup as it does in the paper, however short the run."""
    return float(alpha) if alpha is not None else 1.0 - max(batch, paper_batch) / 16384


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The authors' rule: decay on conv/FC weights and biases and on Proxy Norm's proxy parameters (beta~, gamma~);
    none on norm gammas/betas (PN's own gamma/beta included) or other non-conv/FC parameters."""
    norm = getattr(model, "norm", None)  # the norm registry says which of its parameters decay
    norm_decayed = NORMS[norm].decayed_params if isinstance(norm, str) and norm in NORMS else ()
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (decay if isinstance(module, _DECAYED) or name in norm_decayed else no_decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """cfg: optimizer section (name, weight_decay, momentum, eps, alpha). timm's factory does the rest."""
    extra = {}
    if cfg.name in ("rmsprop", "rmsproptf"):
        extra = dict(alpha=cfg.alpha, eps=cfg.eps)
    elif cfg.get("eps") is not None and cfg.name not in ("sgd", "momentum", "nesterov"):
        extra = dict(eps=cfg.eps)
    return create_optimizer_v2(param_groups(model, cfg.weight_decay), opt=cfg.name, lr=lr,
                               weight_decay=cfg.weight_decay, momentum=cfg.momentum, **extra)


def build_ema(model: nn.Module, cfg) -> ModelEmaV3:
    """The weight average (cfg: the ema section, decay per update) as every backend keeps it."""
    return ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup).requires_grad_(False)


def build_scheduler(optimizer, cfg, steps_per_epoch: int, epochs: int):
    """Per-step LR: `step` = linear warmup then x decay_rate every decay_epochs (staircase, counted from step 0,
    as TF's EfficientNet); `cosine` = cosine to zero over the phase (the finetuning schedule)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.name == "step":
        return StepLRScheduler(optimizer, decay_t=max(1.0, cfg.decay_epochs * steps_per_epoch),
                               decay_rate=cfg.decay_rate, warmup_t=warmup, warmup_lr_init=cfg.warmup_lr_init,
                               t_in_epochs=False)
    return CosineLRScheduler(optimizer, t_initial=max(1, steps_per_epoch * epochs), lr_min=0.0, warmup_t=warmup,
                             warmup_lr_init=cfg.warmup_lr_init, t_in_epochs=False)


class PaperMixCut:
    """The authors' batch augmentation (PAPER.md section 3): CutMix "version 1", one draw per batch, then Mixup with
    a Beta(alpha, alpha) coefficient per sample, both on every batch. Returns the mixed images and soft targets
    (smoothed one-hots, mixed with the same weights). Partners are the batch rolled by 2 (CutMix) and by 1 (Mixup),
    so any batch of 2 or more works. Random draws use torch's generator (seeded by the run's seed)."""

    def __init__(self, mixup_alpha: float, cutmix_lambda: float | None, num_classes: int, label_smoothing: float,
                 cut_scale: float = 1.0):
        """cut_scale multiplies the rate of cuts (the regularization scale)."""
        self.mixup_alpha, self.cutmix_lambda = float(mixup_alpha), cutmix_lambda
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.cut_scale = cut_scale

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        off = self.label_smoothing / self.num_classes
        target = torch.full((len(y), self.num_classes), off, device=x.device, dtype=torch.float32)
        target.scatter_(1, y.view(-1, 1), 1.0 - self.label_smoothing + off)
        if self.cutmix_lambda is not None:
            x, target = self.cutmix(x, target)
        if self.mixup_alpha > 0:
            x, target = self.mixup(x, target)
        return x, target

    def cut_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, bottom, left, right) of the pasted box, or None for no cut (probability 1.55 lambda - 0.96)."""
        no_cut = 1.55 * self.cutmix_lambda - 0.96
        if self.cut_scale != 1.0:
            no_cut = 1.0 - self.cut_scale * (1.0 - no_cut)
        if torch.rand(()).item() < no_cut:
            return None
        u = torch.empty(()).uniform_(math.exp(-4.0), 1.0).item()
        side = math.sqrt(-math.log(u) / 4.0)  # cut area 1 - kept, kept = 1 + ln(U) / 4
        cy, cx = torch.rand(()).item() * height, torch.rand(()).item() * width
        h, w = side * height, side * width
        top, bottom = max(0, round(cy - h / 2)), min(height, round(cy + h / 2))
        left, right = max(0, round(cx - w / 2)), min(width, round(cx + w / 2))
        return top, bottom, left, right

    def cutmix(self, x, target):
        box = self.cut_box(x.shape[-2], x.shape[-1])
        if box is None:
            return x, target
        top, bottom, left, right = box
        x = x.clone()
        x[..., top:bottom, left:right] = x[..., top:bottom, left:right].roll(2, 0)  # only the box moves
        kept = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])  # the actual kept fraction
        return x, kept * target + (1.0 - kept) * target.roll(2, 0)

    def mixup(self, x, target):
        lam = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample((len(x),)).to(x.device)
        lx = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return lx * x + (1 - lx) * x.roll(1, 0), lam.view(-1, 1) * target + (1 - lam.view(-1, 1)) * target.roll(1, 0)


def build_mixup(cfg, size: str, num_classes: int, label_smoothing: float, scale: float = 1.0) -> PaperMixCut | None:
    """cfg: augment section. mixup_alpha / cutmix_lambda "auto" = the size row's (the paper's); None when both off.
    `scale` (the regularization scale) multiplies Mixup's alpha and the rate of cuts."""
    spec = check_size(size)
    alpha = spec.mixup_alpha if cfg.mixup_alpha == "auto" else float(cfg.mixup_alpha or 0.0)
    lam = spec.cutmix_lambda if cfg.cutmix_lambda == "auto" else cfg.cutmix_lambda
    alpha *= scale
    if (alpha <= 0 and lam is None) or scale <= 0:
        return None
    return PaperMixCut(alpha, None if lam is None else float(lam), num_classes, label_smoothing, cut_scale=scale)
