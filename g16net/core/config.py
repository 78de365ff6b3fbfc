"""Check a composed config before any work starts, and resolve its "auto"/null values into a RunPlan.

Every check here is cheap (no data loading, no model weights), so a typo fails in a second with a message that
names the key, the bad value and what is allowed, instead of after an epoch.
"""

import importlib
import importlib.resources
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..models import check_size
from ..models.efficientnet import DROP_PATH_RATE
from .backend_api import Device
from .recipe import build_mixup, regularization_scale, rmsprop_decay, time_scale


class ConfigError(ValueError):
    """A config value that cannot work; raised before any expensive step."""


@dataclass(frozen=True)
class RunPlan:
    """Every "auto"/null of the config resolved, from the config, the data and the backend's device: the one place
    that says at which resolutions, batch sizes and learning rates this run trains and is evaluated."""
    schedule: str
    train_res: int
    native_res: int
    finetune_res: int
    test_res: list[int]
    headline_res: int
    finetune_epochs: int
    lr: float
    finetune_lr: float
    rmsprop_alpha: float | None
    finetune_rmsprop_alpha: float | None
    time_scale: float  # the factor on the paper's warmup, LR decay period and weight average (recipe.time_scale)
    num_classes: int
    device: Device
    batch: int  # per device
    finetune_batch: int | None  # per device; None without finetuning


def model_kwargs(cfg: DictConfig, num_classes: int) -> dict:
    """`create_model` arguments: the model section as it is (its keys are the function's), plus norm and classes."""
    kw = OmegaConf.to_container(cfg.model, resolve=True)
    scale = regularization_scale(cfg)
    if scale != 1.0:  # dropout (None = the size's) and stochastic depth, scaled with the run
        kw["drop_rate"] = scale * (check_size(kw["size"]).dropout if kw.get("drop_rate") is None else kw["drop_rate"])
        kw["drop_path_rate"] = scale * (DROP_PATH_RATE if kw.get("drop_path_rate") is None else kw["drop_path_rate"])
    return {**kw, "norm": norm_name(cfg), "num_classes": num_classes}


def norm_name(cfg: DictConfig) -> str:
    """`norm.name`, once the module its yaml names (`import: mypkg.mynorms`, optional) is imported: a norm of the
    user's own registers itself there with `g16net.models.register_norm`, in every process that builds the model."""
    module = cfg.norm.get("import")
    if module is not None:
        if not isinstance(module, str) or not module.strip():
            raise ConfigError(f"norm.import={module!r} must be the dotted name of a module (e.g. mypkg.mynorms)")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"norm.import={module!r} cannot be imported ({type(e).__name__}: {e}); it must be "
                              "a module on the Python path that calls g16net.models.register_norm") from None
    return cfg.norm.name


def _resolution_list(cfg, key) -> list[int] | None:
    v = OmegaConf.select(cfg, key)
    if v is None:
        return None
    if not isinstance(v, (list, ListConfig)) or not v or not all(isinstance(r, int) and r > 0 for r in v):
        raise ConfigError(f"{key}={v!r} must be a non-empty list of positive integers (pixels)")
    return sorted(set(v))


def plan_run(cfg: DictConfig, data, device: Device) -> RunPlan:
    """Resolve resolutions (config, else the data's, else the model size's), per-device batches, LRs and RMSprop
    decays. `data` is the DataSource; `device` the backend's (how the global batch splits)."""
    size = check_size(cfg.model.size)
    schedule = cfg.resolution.schedule
    native = cfg.resolution.native or data.native_resolution or size.native_res
    half = data.half_resolution or size.half_res
    train = cfg.resolution.train or (half if schedule == "half" else native)
    if not train:
        raise ConfigError(f"resolution=half but data {cfg.data.name!r} (model.size={cfg.model.size}) has no half "
                          "resolution; set resolution.train=PIXELS or data.half_resolution")
    ft_epochs = cfg.finetune.epochs
    finetune_res = cfg.finetune.resolution or native
    test = (_resolution_list(cfg, "eval.resolutions") or _resolution_list(cfg, "data.test_resolutions")
            or sorted({train, native, native + 32}))
    for key, v in (("resolution.train", train), ("resolution.native", native), ("finetune.resolution", finetune_res)):
        if not isinstance(v, int) or v < 8:
            raise ConfigError(f"{key}={v!r} must be an integer number of pixels >= 8")
    highest_test = finetune_res if ft_epochs else native
    if train > highest_test and not cfg.resolution.allow_train_above_test:
        raise ConfigError(
            f"train resolution {train} is above the test resolution {highest_test} "
            f"({'finetune.resolution' if ft_epochs else 'native resolution'}); the method trains at or below it. "
            "Set resolution.allow_train_above_test=true if this is intended.")
    batch = _per_device_batch("batch_size", cfg.batch_size, device)
    ft_batch = _per_device_batch("finetune.batch_size", cfg.finetune.batch_size, device) if ft_epochs else None
    mixing = build_mixup(cfg.augment, cfg.model.size, data.num_classes, 0.0) is not None
    _check_mixup_batch("augment", batch, mixing)
    if ft_epochs:
        _check_mixup_batch("finetune.mixup", ft_batch, mixing and cfg.finetune.mixup)
    lr = cfg.optimizer.lr or cfg.optimizer.lr_per_sample * cfg.batch_size
    ft_lr = cfg.finetune.lr or cfg.finetune.lr_per_sample * cfg.finetune.batch_size
    alpha = rmsprop_decay(cfg.optimizer.alpha, cfg.batch_size, paper_batch=768)
    ft_alpha = rmsprop_decay(cfg.finetune.optimizer.alpha, cfg.finetune.batch_size, paper_batch=512)
    headline = finetune_res if ft_epochs else native
    test = sorted(set(test) | {headline})  # the resolution the run is reported at is always evaluated
    return RunPlan(schedule, train, native, finetune_res, test, headline, ft_epochs, float(lr), float(ft_lr), alpha,
                   ft_alpha, time_scale(cfg), data.num_classes, device, batch, ft_batch)


def _per_device_batch(key: str, global_batch: int, device: Device) -> int:
    if global_batch % device.batch_split:
        raise ConfigError(f"{key}={global_batch} is the global batch and must divide evenly over "
                          f"{device.split_keys}: a multiple of {device.batch_split}")
    return global_batch // device.batch_split


def _check_mixup_batch(key: str, batch: int, mixing: bool) -> None:
    """The authors' CutMix + Mixup pair each sample with another of the same device batch."""
    if mixing and batch < 2:
        off = "finetune.mixup=false" if key == "finetune.mixup" else "augment.mixup_alpha=0 augment.cutmix_lambda=null"
        raise ConfigError(f"{key}: Mixup/CutMix needs a per-device batch of 2 or more, got {batch}; change the "
                          f"batch size (and device/replica/accumulation counts) or turn mixing off ({off})")


def resolve_accelerator(cfg: DictConfig) -> tuple[str, str]:
    """(accelerator, precision) for trainer.accelerator / trainer.precision "auto": a visible GPU and bf16-mixed,
    else the CPU and fp32."""
    accelerator = cfg.trainer.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator!r} but no CUDA device is visible; "
                          "use trainer=cpu (or trainer.accelerator=auto)")
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"
    return accelerator, precision
