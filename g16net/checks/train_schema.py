"""Every key of the training config (`python -m g16net.train`) and what it allows; the defaults are the yaml files'.

A new key is one line in its section below (`name: Any = key("what it is", type, bounds..., null=..., auto=...)`),
a new section one `section(...)` line and its dataclass; docs/config.md is regenerated with
`python -m g16net.checks.config_doc > docs/config.md`. The `data` section is declared by the data source's
class (`Config` of g16net.data.DataSource subclasses), the `ipu` section in g16net/backends/ipu_schema.py.
"""

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from ..backends import BACKENDS
from ..backends.ipu_schema import IpuConfig
from ..core.schema import is_int, key, rule, section
from ..data.config import DataConfig
from ..models import SIZES

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
RES = dict(ge=8)  # a training or test resolution in pixels


@functools.cache
def timm_optimizers() -> frozenset[str]:
    from timm.optim import list_optimizers

    return frozenset(list_optimizers())



def _devices(v) -> bool:
    if isinstance(v, (list, tuple)):
        return bool(v) and all(is_int(d) and d >= 0 for d in v)
    return is_int(v) and (v >= 1 or v == -1)


def _limit(v) -> bool:
    return (is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)


@dataclass
class OptimizerSettings:
    name: Any = key("a timm optimizer (timm.optim.create_optimizer_v2)", str, test=lambda v: v in timm_optimizers(),
                    allowed="a timm optimizer name (timm.optim.list_optimizers()), e.g. rmsproptf, sgd, adamw",
                    examples=("sgd", "rmsproptff"))
    weight_decay: Any = key("on conv/FC weights and biases and PN's proxy parameters", float, ge=0)
    momentum: Any = key("momentum (RMSprop, SGD)", float, ge=0, lt=1)
    eps: Any = key("the optimizer's epsilon (RMSprop-TF: inside the square root)", float, gt=0)
    alpha: Any = key("RMSprop decay rho", float, gt=0, lt=1,
                     null="1 - max(batch, the paper's batch) / 16384 (the paper's 0.953125 at 768)")


@dataclass
class Optimizer(OptimizerSettings):
    lr: Any = key("absolute learning rate", float, gt=0, null="lr_per_sample x batch_size (linear scaling)")
    lr_per_sample: Any = key("learning rate per sample of the global batch", float, gt=0)


@dataclass
class FinetuneScheduler:
    name: Any = key("cosine (to zero over the phase) | step (linear warmup, then x decay_rate every decay_epochs)",
                    choices=("cosine", "step"))
    warmup_epochs: Any = key("linear warmup, in paper epochs (x schedule_scale)", float, ge=0)
    warmup_lr_init: Any = key("learning rate at the start of the warmup", float, ge=0)
    decay_rate: Any = key("step: the factor every decay_epochs", float, gt=0, le=1, optional=True)
    decay_epochs: Any = key("step: the decay period, in paper epochs (x schedule_scale)", float, gt=0, optional=True)


@dataclass
class Scheduler(FinetuneScheduler):
    name: Any = key("step (linear warmup, then x decay_rate every decay_epochs) | cosine", choices=("step", "cosine"))
    decay_rate: Any = key("step: the factor every decay_epochs", float, gt=0, le=1)
    decay_epochs: Any = key("step: the decay period, in paper epochs (x schedule_scale)", float, gt=0)


@dataclass
class Loss:
    label_smoothing: Any = key("cross-entropy label smoothing (x regularization_scale)", float, ge=0, lt=1)


@dataclass
class Augment:
    mixup_alpha: Any = key("per-sample Mixup Beta(alpha, alpha); 0 = off", float, ge=0,
                           auto="the model size's (b0 0.1 ... b5 0.2)")
    cutmix_lambda: Any = key("CutMix 'version 1' cut rate", float, gt=0, le=1, null="off",
                             auto="the model size's (b0 off, b1 0.95 ... b5 0.8)")


@dataclass
class Ema:
    enabled: Any = key("keep an average of the weights (used for finetuning and evaluation)", bool)
    decay: Any = key("per paper epoch (raised to 1 / schedule_scale per epoch of this run)", float, gt=0, lt=1)
    every: Any = key("epoch = average of per-epoch weights | step (same decay per epoch)", choices=("epoch", "step"))
    warmup: Any = key("timm ModelEmaV3's decay ramp (not in the paper)", bool)


@dataclass
class Finetune:
    epochs: Any = key("FixRes-style finetuning epochs; 0 = none", int, ge=0)
    resolution: Any = key("finetuning resolution in pixels", int, **RES, null="the native resolution")
    layers: Any = key("head (head conv, its norm/PN, classifier) | all", choices=("head", "all"))
    recalibrate_bn: Any = key("BN layers also train and re-estimate statistics", bool,
                              auto="the norm registry's (true for bn)")
    batch_size: Any = key("global finetuning batch", int, ge=1)
    lr: Any = key("absolute learning rate", float, gt=0, null="lr_per_sample x finetune.batch_size")
    lr_per_sample: Any = key("learning rate per sample of the global batch", float, gt=0)
    eval_transform: Any = key("resize + centre crop instead of random crops", bool)
    mixup: Any = key("Mixup/CutMix while finetuning", bool)
    dropout: Any = key("dropout while finetuning", bool)
    optimizer: Any = section(OptimizerSettings, "the finetuning optimizer")
    scheduler: Any = section(FinetuneScheduler, "the finetuning schedule")


@dataclass
class Eval:
    resolutions: Any = key("test resolutions in pixels", list, item=rule("", int, **RES),
                           null="data.test_resolutions, else {train, native, native + 32}")
    before_finetune: Any = key("also evaluate the averaged weights before finetuning", bool)


@dataclass
class Throughput:
    enabled: Any = key("measure training and inference images/s (model compute only)", bool)
    batch_size: Any = key("per-device batch of the measurement", int, ge=1, null="the per-device training batch")
    warmup: Any = key("untimed steps first", int, ge=0)
    steps: Any = key("timed steps", int, ge=1)


@dataclass
class Model:
    size: Any = key("EfficientNet size (g16net.models.SIZES)", choices=tuple(SIZES))
    group_size: Any = key("channels per group of the spatial convs (1 = depthwise)", int, ge=1)
    expand_ratio: Any = key("MBConv expansion", float, ge=1)
    group_rule: Any = key("authors (exact) | divisor (largest group count that divides; needed for b6)",
                          choices=("authors", "divisor"))
    drop_rate: Any = key("dropout before the classifier", float, ge=0, lt=1, null="the size's (b0 0.2 ... b7 0.5)")
    drop_path_rate: Any = key("stochastic depth, rising linearly to this at the last block", float, ge=0, lt=1)
    zero_init_last: Any = key("residual blocks start as identities (their last norm's scale = 0)", bool)


@dataclass
class Norm:
    name: Any = key("a norm of g16net.models.NORMS (bn, gn, ln, ln_pn, gn_pn, in, ln_ws, evos0, or one a module "
                    "registers)", str)
    import_: Any = key("module imported first, which registers the norm", str, null="none", optional=True,
                       name="import")


@dataclass
class Resolution:
    schedule: Any = key("half = train at about half the pixels, then finetune | native", choices=("half", "native"))
    train: Any = key("training resolution in pixels", int, **RES,
                     null="data.half_resolution (half) or the native resolution (native)")
    native: Any = key("native resolution in pixels", int, **RES,
                      null="data.native_resolution (imagenet: the model size's)")
    allow_train_above_test: Any = key("allow a training resolution above the test resolution", bool)


@dataclass
class Trainer:
    """Lightning Trainer arguments, passed to pl.Trainer as they are; any other pl.Trainer argument may be added."""
    accelerator: Any = key("where the model runs", choices=ACCELERATORS[1:],
                           auto="a GPU if one is visible, else the CPU")
    devices: Any = key("devices per node", test=_devices, examples=(2, 0), auto="Lightning's (all visible)",
                       allowed="an integer >= 1, -1 (all), or a list of device indices")
    num_nodes: Any = key("nodes", int, ge=1)
    strategy: Any = key("Lightning strategy (auto, ddp, ...)", str)
    sync_batchnorm: Any = key("SyncBatchNorm for norm=bn", bool)
    precision: Any = key("Lightning precision", choices=PRECISIONS[1:], auto="bf16-mixed on GPU, 32-true on CPU")
    accumulate_grad_batches: Any = key("device batches per weight update", int, ge=1)
    gradient_clip_val: Any = key("gradient norm clip", float, ge=0, null="no clipping")
    deterministic: Any = key("deterministic kernels", choices=(True, False, "warn"))
    benchmark: Any = key("cudnn.benchmark", bool, auto="on unless deterministic")
    progress_bar: Any = key("live progress bar", bool, auto="only when attached to a terminal")
    log_every_n_steps: Any = key("logging interval in steps", int, ge=1)
    limit_train_batches: Any = key("training batches per epoch", test=_limit, examples=(4, 0), null="all",
                                   allowed="an integer >= 1 (batches) or a fraction in (0, 1]")
    limit_val_batches: Any = key("evaluation batches per resolution", test=_limit, examples=(0.5, 1.5), null="all",
                                 allowed="an integer >= 1 (batches) or a fraction in (0, 1]")

    @staticmethod
    def extra_key(k: str, v) -> str | None:
        """Any other pl.Trainer argument passes; anything else is a typo."""
        if k.rsplit(".", 1)[1] in trainer_arguments():
            return None
        return (f"unknown config key {k!r} (value {v!r}); it is no pl.Trainer argument (trainer.* keys are passed "
                "to pl.Trainer; every key: docs/config.md)")


@functools.cache
def trainer_arguments() -> frozenset[str]:
    import pytorch_lightning as pl

    return frozenset(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


@dataclass
class Logger:
    name: Any = key("experiment logger (metrics.json and checkpoints are written in any case)",
                    choices=("csv", "wandb", "none"))
    project: Any = key("wandb: project", str, optional=True)
    entity: Any = key("wandb: entity", str, null="your default entity", optional=True)
    group: Any = key("wandb: group", str, null="the job's name", optional=True)
    tags: Any = key("wandb: tags", list, item=rule("", str), empty=True, optional=True)
    mode: Any = key("wandb: offline (sync later) | online", choices=("offline", "online"), optional=True)


@dataclass
class Diagnostics:
    every_epoch: Any = key("record the power terms of activations on a fixed validation batch before training and "
                           "after every epoch (docs/diagnostics.md); backend=lightning", bool)
    batch_size: Any = key("images in that batch (the instance-mean term is a variance over them)", int, ge=2)


@dataclass
class TrainConfig:
    name: Any = key("the run's name (logger runs, W&B group)", str)
    seed: Any = key("seed of weights, data order and augmentation", int, ge=0, le=2**32 - 1)
    backend: Any = key("what runs the phases (g16net/backends/<name>.py)", choices=tuple(BACKENDS))
    epochs: Any = key("training epochs", int, ge=1)
    schedule_scale: Any = key("factor on the paper's warmup, LR decay period and weight average (1 = as written)",
                              float, gt=0, auto="epochs / 350")
    regularization_scale: Any = key("x the paper's Mixup alpha, CutMix rate, label smoothing, dropout, stochastic "
                                    "depth", float, ge=0, le=1, auto="min(1, epochs / 350)")
    batch_size: Any = key("GLOBAL batch = devices x nodes x per-device batch x accumulation", int, ge=1)
    eval_batch_size: Any = key("evaluation batch per device", int, ge=1)
    ckpt_path: Any = key("resume", str, null="a fresh run", test=lambda v: v == "last" or Path(v).is_file(),
                         allowed="last (resume this run dir) or the path of a Lightning checkpoint file",
                         examples=("last", "/no/such.ckpt"))
    overwrite: Any = key("a fresh run in a dir with results moves them to previous-*/ (false = refuse)", bool)
    compile: Any = key("torch.compile the model", bool)
    channels_last: Any = key("channels-last memory format", bool)
    optimizer: Any = section(Optimizer, "the training optimizer")
    scheduler: Any = section(Scheduler, "the training LR schedule")
    loss: Any = section(Loss)
    augment: Any = section(Augment, "batch augmentation (the authors' CutMix then Mixup)")
    ema: Any = section(Ema, "the weight average")
    finetune: Any = section(Finetune, "FixRes-style finetuning at the native resolution")
    eval: Any = section(Eval)
    throughput: Any = section(Throughput, "images/s, fixed protocol (g16net/efficiency/measure.py)")
    diagnostics: Any = section(Diagnostics, "the per-epoch power record (python -m g16net.diagnose draws it)")
    ipu: Any = section(IpuConfig, "backend=ipu only: PopTorch options")
    model: Any = section(Model, "group: model=g16|g1")
    norm: Any = section(Norm, "group: norm=bn|gn|ln|ln_pn|gn_pn|in|ln_ws|evos0")
    resolution: Any = section(Resolution, "group: resolution=half|native")
    trainer: Any = section(Trainer, "group: trainer=auto|cpu|gpu|ddp (pl.Trainer arguments)")
    logger: Any = section(Logger, "group: logger=csv|wandb|none")
    data: Any = section(DataConfig, "group: data=<name>; the keys are the data source's (its class's Config)",
                        optional=True)


# Hydra's registry of structured configs: where tools (and `hydra.utils`) find what the app's config is made of.
ConfigStore.instance().store(name="g16net_train_schema", node=TrainConfig)
