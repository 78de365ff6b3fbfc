"""The types between the run and a backend: what a backend runs on (`Device`), the training phase the run hands it
(`Phase`) and what it hands back (`Fitted`). Both sides import them from here, below both."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Device:
    """What a backend runs on, known before any data is built; the run plan splits batches with it."""
    accelerator: str  # cpu | gpu | ipu
    precision: str  # Lightning's names: 32-true, bf16-mixed, 16-true, ...
    world_size: int  # data-parallel replicas
    accumulation: int  # micro-batches per weight update
    split_keys: str  # the settings that split the global batch, for error messages
    is_global_zero: bool = True

    @property
    def batch_split(self) -> int:
        """Global batch / per-device batch."""
        return self.world_size * self.accumulation


@dataclass
class Phase:
    """One training phase, every recipe choice already made by the run."""
    name: str  # train | finetune
    epochs: int
    resolution: int
    train_set: Dataset
    val_set: Dataset
    batch: int  # per device
    stats: tuple  # (mean, std) per channel in 0-1 units: images are normalized on the device
    num_classes: int
    optimizer: object  # the optimizer section, RMSprop decay resolved
    lr: float
    scheduler: object  # the scheduler section, scaled to the run's length
    mixup: Callable | None  # recipe.PaperMixCut or None
    ema: object | None  # the weight-average section (decay per epoch), None = no average
    head_only: bool  # finetuning: only the head (and BN layers with recalibrate_bn) trains
    recalibrate_bn: bool
    dropout: bool  # head dropout during finetuning
    ckpt_dir: Path  # checkpoints/<phase>/: last.ckpt after every epoch
    resume: str | None  # a checkpoint to continue from
    on_epoch_end: Callable[[], None] = lambda: None
    diag_images: torch.Tensor | None = None  # diagnostics.every_epoch: the fixed uint8 batch of the power record
    diag_csv: Path | None = None  # ... and the CSV it appends to


@dataclass
class Fitted:
    epochs: int
    throughput_pipeline: float  # training img/s of all replicas, data pipeline included
