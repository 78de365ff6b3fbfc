"""Cost of a model: parameters, forward MACs, measured throughput and memory.

One fixed protocol everywhere (bench, training runs, studies), so numbers from different runs compare:
model compute only, on device-resident random tensors (the data pipeline is measured separately by the training
job), `warmup` untimed steps, then `steps` timed steps between device synchronizations. A training step is
forward + cross-entropy + backward + RMSprop-TF update, on a copy of the model so the caller's weights never move.
"""

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PRECISIONS = ("fp32", "bf16", "fp16")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(model: nn.Module, resolution: int, in_chans: int = 3) -> float:
    """Forward multiply-accumulates per image (torch's flop counter / 2; grouped convs counted per group).

    Counted on a meta-device copy: shapes only, no arithmetic, so B7 at 600 px costs nothing. The second of two
    forwards is counted: what depends on the weights only (Proxy Norm's statistics) is computed once at inference,
    not per image.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros(1, in_chans, resolution, resolution, device="meta")
    with torch.no_grad():
        meta(x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() / 2


@dataclass
class Throughput:
    mode: str
    img_per_s: float
    step_ms: float
    peak_mem_mb: float | None  # allocator peak on CUDA; None on CPU (no per-model allocator statistics)
    activation_mb: float  # tensors saved for backward in one training forward (0 for inference)
    batch_size: int
    resolution: int
    precision: str
    channels_last: bool
    compiled: bool


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision={precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> int:
    """Bytes autograd keeps for backward during one forward: the activation memory a batch costs.

    Device-independent, so it also reports the G16-vs-depthwise memory difference on a CPU. Each storage is
    counted once, however many ops save it.
    """
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen and not isinstance(t, nn.Parameter):
            seen.add(key)
            total += t.untyped_storage().nbytes()
        # Not `t` itself: an op that saves its own output (ReLU, SiLU's grad) would then hold a reference cycle
        # through its grad_fn that Python's gc cannot see, and every call kept its activations (~0.12 GB a call for
        # G16-B0 at 48 px, 11 GB in one bench run).
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(x.device, precision):
        model(x)
    return total


def measure_throughput(
    model: nn.Module, resolution: int, batch_size: int, mode: str = "train", warmup: int = 3, steps: int = 10,
    precision: str = "fp32", channels_last: bool = False, compile: bool = False, device: str | None = None,
    num_classes: int | None = None,
) -> Throughput:
    """Images per second for `mode` in {"train", "infer"} under the module docstring's protocol."""
    if mode not in ("train", "infer"):
        raise ValueError(f"unknown mode={mode!r}; allowed: train, infer")
    if warmup < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"warmup, steps and batch_size must be >= 1, got {warmup}, {steps}, {batch_size}")
    dev = torch.device(device or next(model.parameters()).device)
    net = copy.deepcopy(model).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, resolution, resolution, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    n_out = num_classes or net.get_classifier().out_features
    y = torch.randint(0, n_out, (batch_size,), device=dev)
    act_bytes = 0
    if mode == "train":
        net.train()
        act_bytes = saved_activation_bytes(net, x, precision)
        opt = create_optimizer_v2(net, "rmsproptf", lr=1e-4, weight_decay=1e-5)
    else:
        net.eval()
    # Static shapes: after a first resolution, torch.compile would otherwise recompile the next one with symbolic
    # shapes, whose generic CPU kernels ran plain-LN G16-B0 at half its eager speed at 128 px (40 vs 83 img/s).
    fn = torch.compile(net, dynamic=False) if compile else net

    def step():
        if mode == "infer":
            with torch.inference_mode(), _autocast(dev, precision):
                fn(x)
            return
        with _autocast(dev, precision):
            loss = F.cross_entropy(fn(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return Throughput(mode, batch_size / dt, dt * 1e3, peak, act_bytes / 2**20, batch_size, resolution, precision,
                      channels_last, compile)
