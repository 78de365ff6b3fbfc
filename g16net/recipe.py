"""The paper's training recipe, built from timm parts: RMSprop-TF, warmup + staircase decay, Mixup/CutMix, EMA.

Only the choices specific to the paper are written here: which parameters get weight decay (Proxy Norm's proxy
parameters do, though they are 1-D), the per-size Mixup/CutMix table, and the mapping of the authors' CutMix
"mean kept area" onto timm's `cutmix_minmax`.
"""

import math

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from torch import nn

# Authors' configs: size -> (mixup alpha, CutMix mean kept-area target or None).
PAPER_MIXUP = {
    "b0": (0.1, None), "b1": (0.1, 0.95), "b2": (0.1, 0.9), "b3": (0.2, 0.9), "b4": (0.2, 0.85), "b5": (0.2, 0.8),
    "b6": (0.2, 0.8), "b7": (0.2, 0.8),  # not in the paper's runs: B5's values carried on
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay for conv/linear weights and Proxy Norm's proxy parameters; none for norm affines and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 or "proxy_" in name.rsplit(".", 1)[-1] else no_decay).append(p)
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


def build_scheduler(optimizer, cfg, steps_per_epoch: int, epochs: int):
    """Per-step LR: `step` = linear warmup then x decay_rate every decay_epochs (staircase, counted from step 0,
    as TF's EfficientNet); `cosine` = cosine to zero over the phase (the finetuning schedule)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.name == "step":
        return StepLRScheduler(optimizer, decay_t=max(1, round(cfg.decay_epochs * steps_per_epoch)),
                               decay_rate=cfg.decay_rate, warmup_t=warmup, warmup_lr_init=cfg.warmup_lr_init,
                               t_in_epochs=False)
    return CosineLRScheduler(optimizer, t_initial=max(1, steps_per_epoch * epochs), lr_min=0.0, warmup_t=warmup,
                             warmup_lr_init=cfg.warmup_lr_init, t_in_epochs=False)


def cutmix_minmax(mean_kept_area: float) -> tuple[float, float]:
    """timm samples the box side ratio r ~ U(lo, hi) and cuts area r^2; E[kept] = 1 - hi^2 / 3 for lo = 0."""
    return 0.0, min(1.0, math.sqrt(3.0 * (1.0 - mean_kept_area)))


def build_mixup(cfg, size: str, num_classes: int, label_smoothing: float) -> Mixup | None:
    """cfg: augment section. mixup_alpha / cutmix_kept_area "auto" = the paper's per-size values."""
    paper_alpha, paper_kept = PAPER_MIXUP[size]
    alpha = paper_alpha if cfg.mixup_alpha == "auto" else float(cfg.mixup_alpha or 0.0)
    kept = paper_kept if cfg.cutmix_kept_area == "auto" else cfg.cutmix_kept_area
    if alpha <= 0 and kept is None:
        return None
    minmax = cutmix_minmax(kept) if kept is not None else None
    # With both on, timm picks one per batch (switch_prob); with one on it is always that one.
    return Mixup(mixup_alpha=alpha, cutmix_minmax=minmax, prob=1.0, switch_prob=0.5,
                 label_smoothing=label_smoothing, num_classes=num_classes)
