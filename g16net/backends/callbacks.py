"""Lightning callbacks the recipe needs beyond Lightning's own."""

import csv
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from ..core.run_safety import raise_if_stopped


class Bar(TQDMProgressBar):
    """Lightning's bar without `v_num` (it shows the CSV logger's version, here the phase name, cut short)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class PipelineThroughput(pl.Callback):
    """Training img/s per device as the real loop sees it (data pipeline included, validation excluded).

    The first epoch is left out when there are more (worker start-up, allocator warm-up), so the figure describes
    the steady state; `g16net.efficiency.measure` measures model compute alone.
    """

    def __init__(self):
        self.epochs: list[tuple[int, float]] = []  # (images, seconds) per epoch
        self._start, self._images, self._last = 0.0, 0, 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start, self._images, self._last = time.perf_counter(), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += len(batch[1])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if self._images:
            self.epochs.append((self._images, self._last - self._start))

    @property
    def img_per_s(self) -> float:
        steady = self.epochs[1:] or self.epochs
        seconds = sum(s for _, s in steady)
        return sum(n for n, _ in steady) / seconds if seconds > 0 else float("nan")


class EvalPipelineThroughput(pl.Callback):
    """Evaluation img/s per validation dataloader (one per test resolution), data pipeline included: the
    span from the first batch's start to the last batch's end, so worker start-up is left out."""

    def __init__(self):
        self.spans: dict[int, list] = {}  # dataloader index -> [images, first start, last end]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.spans.setdefault(dataloader_idx, [0, time.perf_counter(), 0.0])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        span = self.spans[dataloader_idx]
        span[0] += len(batch[1])
        span[2] = time.perf_counter()

    def img_per_s(self, dataloader_idx: int) -> float:
        images, start, end = self.spans.get(dataloader_idx, (0, 0.0, 0.0))
        return images / (end - start) if end > start else float("nan")


class PowerRecord(pl.Callback):
    """diagnostics.every_epoch: the power terms (g16net.diagnostics) at every norm layer's taps on one fixed batch,
    before the phase's first epoch (epoch 0, or the epoch it resumes at) and after each, appended to `csv_path` on
    rank 0 with the seconds the record took (`record_s`) and the epoch's (`epoch_s`, its validation included).

    The trained weights are measured (not the weight average), norm layers in training mode (BN: the batch's
    statistics), dropout and stochastic depth off; the model's modes, BN running statistics and the random
    streams are left as they were, so training goes on exactly as without the record.
    """

    COLUMNS = ("phase", "epoch", "depth", "layer", "tap", "channels", "height", "width", "channel_mean",
               "instance_mean", "within_instance", "power", "record_s", "epoch_s")

    def __init__(self, phase: str, images, stats, csv_path):
        from .on_device import Normalize

        self.phase, self.images, self.csv_path = phase, images, Path(csv_path)
        self.normalize = Normalize(*stats)
        self._epoch_t0, self.seconds, self.epoch_seconds = 0.0, [], []

    def _record(self, trainer, pl_module, epoch: int, epoch_s: float | None):
        from ..diagnostics import diagnose_model

        if not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        x = self.normalize.to(pl_module.device)(self.images.to(pl_module.device))
        rows = diagnose_model(pl_module.model, x, mode="train")
        record_s = time.perf_counter() - t0
        self.seconds.append(record_s)
        new = not self.csv_path.exists()
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.COLUMNS)
            if new:
                w.writeheader()
            w.writerows({"phase": self.phase, "epoch": epoch, **r, "record_s": round(record_s, 4),
                         "epoch_s": "" if epoch_s is None else round(epoch_s, 3)} for r in rows)

    def on_train_start(self, trainer, pl_module):
        self._record(trainer, pl_module, trainer.current_epoch, None)

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        epoch_s = time.perf_counter() - self._epoch_t0
        self.epoch_seconds.append(epoch_s)
        self._record(trainer, pl_module, trainer.current_epoch + 1, epoch_s)

    def on_train_end(self, trainer, pl_module):
        if self.seconds and self.epoch_seconds:
            per = sum(self.seconds) / len(self.seconds)
            share = 100 * per * len(self.epoch_seconds) / sum(self.epoch_seconds)
            say(f"{self.phase}: power record {per:.2f} s each, {share:.1f}% of an epoch ({self.csv_path})",
                trainer.is_global_zero)


def say(line: str, rank_zero: bool = True) -> None:
    """A plain progress line on stdout, flushed at once (SLURM .out files and CI logs are not terminals)."""
    if rank_zero:
        print(f"[g16net] {line}", flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class EpochLog(pl.Callback):
    """One line per epoch on rank 0: phase, epoch/N, train loss, val top-1, img/s, elapsed and ETA of the phase.
    `on_epoch_end` runs after each epoch (the runner saves the run's wall time there)."""

    def __init__(self, phase: str, on_epoch_end=None):
        self.phase, self.on_epoch_end = phase, on_epoch_end
        self._t0 = self._epoch_t0 = self._end = 0.0
        self._images, self._done, self._loss = 0, 0, 0.0

    def on_train_start(self, trainer, pl_module):
        self._t0, self._done = time.perf_counter(), 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_t0, self._images, self._loss = time.perf_counter(), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        raise_if_stopped()  # a stop signal swallowed by a finalizer during this batch
        n = len(batch[1])
        self._images += n
        self._end = time.perf_counter()  # validation, which runs before the epoch ends, is not training speed
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss += float(loss) * n

    def on_train_epoch_end(self, trainer, pl_module):
        self._done += 1
        now = time.perf_counter()
        loss = self._loss / self._images if self._images else None
        top1 = _first(trainer.callback_metrics, "/top1@")
        epochs, epoch = trainer.max_epochs, trainer.current_epoch + 1
        per_epoch = (now - self._t0) / self._done
        img_s = self._images * trainer.world_size / max(self._end - self._epoch_t0, 1e-9)
        say(f"{self.phase} epoch {epoch}/{epochs}  loss {_num(loss)}  top-1 {_num(top1, '.2f')}%  "
            f"{img_s:.1f} img/s  elapsed {_hms(now - self._t0)}  ETA {_hms(per_epoch * (epochs - epoch))}",
            trainer.is_global_zero)
        if self.on_epoch_end is not None:
            self.on_epoch_end()


def _first(metrics: dict, suffix: str):
    return next((v for k, v in metrics.items() if suffix in k), None)


def _num(v, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(float(v), fmt)
