"""Lightning callbacks the recipe needs beyond Lightning's own."""

import time

import pytorch_lightning as pl


class PipelineThroughput(pl.Callback):
    """Training img/s per device as the real loop sees it (data pipeline included, validation excluded).

    The first epoch is left out when there are more (worker start-up, allocator warm-up), so the figure describes
    the steady state; `g16net.efficiency` measures model compute alone.
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
