"""What every backend runs on the device around the model: uint8 images normalized there (the host ships 4x fewer
bytes), and top-1 / top-5 / loss counted with torchmetrics."""

import torch
import torchmetrics
from torch import nn


class Normalize(nn.Module):
    """uint8 (or host-mixed float) images in 0-255 -> (x - mean) / std in the buffers' dtype."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) / self.std


def eval_metrics(num_classes: int) -> torchmetrics.MetricCollection:
    """Update with (logits, labels); `scores` turns the result into percent top-1/top-5 and the mean loss."""
    return torchmetrics.MetricCollection({
        "top1": torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "top5": torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=min(5, num_classes),
                                                              average="micro"),
        "loss": _MeanLoss(),
    })


class _MeanLoss(torchmetrics.MeanMetric):
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().update(nn.functional.cross_entropy(logits.float(), target, reduction="none"))


def scores(metrics: torchmetrics.MetricCollection) -> dict[str, float]:
    out = {k: float(v) * (100.0 if k.startswith("top") else 1.0) for k, v in metrics.compute().items()}
    metrics.reset()
    return out
