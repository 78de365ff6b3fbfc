"""backend=ipu: the main job trained and evaluated through PopTorch on Graphcore IPUs (the authors' hardware).

A peer of the Lightning backend (`g16net.backends`): the run hands it the same phases, data and recipe and writes
the same resume files and metrics.json; only the loop differs, because PopTorch compiles a whole step (forward,
loss, backward, optimizer) into one IPU executable:
  * the model is wrapped with its loss (`_OnDevice`); uint8 images are normalized on the IPU;
  * PopTorch's compile-time rules (IPU count a power of 2, pipeline depth vs gradient accumulation and device
    iterations, IPU ids rising in execution order) are checked with the config, before any data is built;
  * PopTorch's RMSprop (TF variant) / SGD with fp32 optimizer state and static loss scaling; the LR schedule is
    pushed with `setOptimizer` between host calls, so it is constant over `ipu.device_iterations` updates;
  * `ipu.half`: a fp16 copy of the model is compiled (fp16 weights, no fp32 master copy: stochastic rounding keeps
    the updates unbiased); the host model stays fp32 and the weight average is updated from it;
  * training calls return the SUM of each replica's micro-batch losses (OutputMode.Sum), divided on the host, so
    train/loss and the non-finite check see every micro-batch, not just the last;
  * the authors' CutMix + Mixup run on the host (one draw per micro-batch), so mixed batches travel as fp16/fp32;
  * the weight average (timm ModelEmaV3) is updated once per epoch from weights copied back to the host;
  * evaluation has its own micro-batch and device iterations and pads the val set to whole device calls (padding
    ignored), so one executable serves it;
  * throughput: the same executables on synthetic on-device data (model compute only, no host I/O).
"""

import copy
import math
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..core import schema
from ..core.backend_api import Device, Fitted, Phase
from ..core.config import ConfigError, model_kwargs
from ..core.recipe import build_ema, build_scheduler, label_smoothing, param_groups
from ..core.run_io import atomic_write_torch
from ..models import create_model
from .ipu_schema import IpuConfig
from .lit_module import NonFiniteLossError, finetune_modes, freeze_all_but_head
from .on_device import Normalize, eval_metrics, scores

INSTALL_HELP = (
    "backend=ipu needs PopTorch, which is not importable here. PopTorch is not on PyPI: it ships inside Graphcore's "
    "Poplar SDK. Enable the SDK (source <sdk>/enable) and install its wheel into this environment with "
    "`pip install <sdk>/poptorch-*.whl`; each SDK release supports one torch version and a narrow Python range "
    "(see its release notes; the last releases pair with torch 2.0.1), so use an environment built for it. "
    "On CPUs and GPUs use backend=lightning (the default)."
)
OPTIMIZERS = ("rmsproptf", "rmsprop", "sgd", "nesterov", "momentum")  # timm names the recipe may use


def import_poptorch():
    try:
        import poptorch
    except ImportError as e:
        raise ConfigError(f"{INSTALL_HELP} (import error: {e})") from None
    return poptorch


class IPUBackend:
    """One job on IPUs. Global batch per weight update = micro-batch x replication_factor x gradient_accumulation."""

    def __init__(self, cfg: DictConfig, run_dir):
        self.poptorch = import_poptorch()  # first: a missing SDK fails before anything else
        self.cfg, self.run_dir = cfg, run_dir
        self.num_ipus = _check_ipu(cfg)  # IPUs per replica = pipeline stages
        ipu = cfg.ipu
        self.half = ipu.half
        self.eval_iterations = _eval_iterations(ipu, self.num_ipus)
        self.device = Device("ipu", "16-true" if self.half else "32-true", ipu.replication_factor,
                             ipu.gradient_accumulation,
                             f"micro-batch x ipu.replication_factor={ipu.replication_factor} x "
                             f"ipu.gradient_accumulation={ipu.gradient_accumulation}")

    # ---- PopTorch pieces ----------------------------------------------------------------------------------------
    def options(self, training: bool, synthetic: bool = False):
        pt, ipu = self.poptorch, self.cfg.ipu
        opts = pt.Options()
        opts.replicationFactor(ipu.replication_factor)
        opts.deviceIterations(ipu.device_iterations if training else self.eval_iterations)
        with torch.random.fork_rng(devices=[]):  # randomSeed also reseeds torch on the host: keep the data order
            opts.randomSeed(int(self.cfg.seed))
        if ipu.auto_round_num_ipus:
            opts.autoRoundNumIPUs(True)
        if training:
            opts.Training.gradientAccumulation(ipu.gradient_accumulation)
            # Mean over micro-batches and replicas: the LR does not depend on how the global batch is split.
            opts.Training.accumulationAndReplicationReductionType(pt.ReductionType.Mean)
            # The default (Final) returns only the last micro-batch of each replica; Sum covers all of them.
            opts.outputMode(pt.OutputMode.Sum)
            if self.half:  # fp16 weights have no fp32 master copy: round the updates without bias
                opts.Precision.enableStochasticRounding(True)
        if self.half and ipu.half_partials:  # the compiler ignores half partials for fp32 convolutions
            opts.Precision.setPartialsType(torch.float16)
        if ipu.available_memory_proportion is not None:
            amp = float(ipu.available_memory_proportion)
            opts.setAvailableMemoryProportion({f"IPU{i}": amp for i in range(self.num_ipus)})
        if ipu.executable_cache_dir:
            opts.enableExecutableCaching(str(ipu.executable_cache_dir))
        if synthetic:
            opts.enableSyntheticData(True)
        return opts

    def _device_copy(self, model: nn.Module) -> nn.Module:
        """What PopTorch compiles: a copy (fp16 with ipu.half) with the pipeline splits annotated."""
        net = copy.deepcopy(model)
        if self.half:
            net.half()
        for entry in self.cfg.ipu.pipeline:
            parent, _, name = entry.layer.rpartition(".")
            owner = net.get_submodule(parent) if parent else net
            block = self.poptorch.BeginBlock(getattr(owner, name), user_id=entry.layer, ipu_id=int(entry.ipu))
            setattr(owner, name, block)  # BeginBlock annotates in place; keep what it returns either way
        return net

    def _wrap(self, net: nn.Module, stats) -> nn.Module:
        return _OnDevice(net, stats, label_smoothing(self.cfg), self.poptorch.identity_loss)

    def _optimizer(self, net: nn.Module, ocfg, lr: float):
        pt, name, wd = self.poptorch, ocfg.name, ocfg.weight_decay
        groups, fp32, scale = param_groups(net, wd), torch.float32, float(self.cfg.ipu.loss_scaling)
        if name in ("rmsproptf", "rmsprop"):
            return pt.optim.RMSprop(groups, lr=lr, alpha=ocfg.alpha, eps=ocfg.eps, weight_decay=wd,
                                    momentum=ocfg.momentum, loss_scaling=scale, accum_type=fp32,
                                    first_order_momentum_accum_type=fp32, second_order_momentum_accum_type=fp32,
                                    use_tf_variant=name == "rmsproptf")
        nesterov = name in ("sgd", "nesterov") and bool(ocfg.momentum)  # timm's "sgd" is Nesterov SGD
        return pt.optim.SGD(groups, lr=lr, momentum=ocfg.momentum, weight_decay=wd, nesterov=nesterov,
                            loss_scaling=scale, accum_type=fp32, velocity_accum_type=fp32)

    # ---- the backend surface ------------------------------------------------------------------------------------
    def fit(self, model, phase: Phase, logger) -> Fitted:
        """Train `model` in place (left holding the weight average if the phase keeps one)."""
        pt, ipu, micro = self.poptorch, self.cfg.ipu, phase.batch
        ema = build_ema(model, phase.ema) if phase.ema is not None else None
        net = self._device_copy(model).train()
        if phase.head_only:
            freeze_all_but_head(net, phase.recalibrate_bn)
            finetune_modes(net, phase.recalibrate_bn, phase.dropout)
        opts = self.options(training=True)
        loader = pt.DataLoader(opts, phase.train_set, batch_size=micro, shuffle=True, drop_last=True,
                               num_workers=self.cfg.data.num_workers)
        calls = _limit(self.cfg.trainer.limit_train_batches, len(loader))
        if calls < 1:
            raise ConfigError(f"{phase.name}: {len(phase.train_set)} images are fewer than one device call of {micro} "
                              f"x {ipu.device_iterations} x {ipu.replication_factor} x {ipu.gradient_accumulation} "
                              "(micro-batch x device_iterations x replication_factor x gradient_accumulation)")
        optimizer = self._optimizer(net, phase.optimizer, phase.lr)
        sched = build_scheduler(optimizer, phase.scheduler, calls * ipu.device_iterations, phase.epochs)
        start = updates = 0
        if phase.resume:
            state = torch.load(phase.resume, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or state.get("backend") != "ipu":
                raise ConfigError(f"ckpt_path: {phase.resume} is not a backend=ipu checkpoint (Lightning checkpoints "
                                  "do not hold the IPU optimizer state); resume it with backend=lightning")
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])  # PopTorch uploads it when the executable attaches
            if ema is not None and state["ema"] is not None:
                ema.module.load_state_dict(state["ema"])
            start, updates = state["epoch"], state["updates"]
            print(f"[g16net] resume: phase '{phase.name}' from {phase.resume} (epoch {start})")
        epochs = phase.epochs
        # Compiled on its first call; not built at all when a resumed phase has nothing left to do.
        step = pt.trainingModel(self._wrap(net, phase.stats), opts, optimizer=optimizer) if start < epochs else None
        dtype, lrs, images, seconds = (torch.float16 if self.half else torch.float32), None, 0, 0.0
        for epoch in range(start, epochs):
            last = time.perf_counter()
            for i, (x, y) in enumerate(loader):
                if i == calls:
                    break
                sched.step_update(num_updates=updates)  # timm schedulers count weight updates
                if [g["lr"] for g in optimizer.param_groups] != lrs:
                    lrs = [g["lr"] for g in optimizer.param_groups]
                    step.setOptimizer(optimizer)
                if phase.mixup is not None:
                    x, y = _mix(phase.mixup, x, y, micro, dtype)
                _, loss = step(x, y)
                # OutputMode.Sum: one sum per replica over its micro-batches, as in Graphcore's CNN examples.
                loss = loss.float().mean().item() / (ipu.device_iterations * ipu.gradient_accumulation)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(f"non-finite training loss ({loss}) in phase '{phase.name}', epoch "
                                             f"{epoch}, update {updates}; the last checkpoint is kept. Lower the LR "
                                             "or raise/lower ipu.loss_scaling.")
                updates += ipu.device_iterations
                now = time.perf_counter()
                # Steady state only: the first epoch when there are more, else all but the compiling first call.
                if (epoch > start) if epochs - start > 1 else i > 0:
                    images, seconds = images + len(x), seconds + now - last
                last = now
                if logger:
                    logger.log_metrics({"train/loss": loss, "train/lr": lrs[0]}, step=updates)
            step.copyWeightsToHost()
            if ema is not None:  # from the fp32 host model: older timm EMAs refuse fp16 weights into fp32 ones
                model.load_state_dict(net.state_dict())
                ema.update(model, step=epoch + 1)
            self._save(phase, net, optimizer, ema, epoch + 1, updates)
            phase.on_epoch_end()
        if step is not None:
            step.destroy()  # releases the IPUs for the inference executables
        model.load_state_dict((ema.module if ema is not None else net).state_dict())
        model.requires_grad_(True)
        if logger:
            logger.finalize("success")
        return Fitted(epochs, images / seconds if seconds > 0 else float("nan"))

    def _save(self, phase: Phase, net, optimizer, ema, epoch, updates):
        """<phase.ckpt_dir>/last.ckpt, where a resume and error.json look for the last good state."""
        atomic_write_torch(phase.ckpt_dir / "last.ckpt", dict(
            backend="ipu", epoch=epoch, updates=updates, model=net.state_dict(), optimizer=optimizer.state_dict(),
            ema=ema.module.state_dict() if ema is not None else None))

    def evaluate(self, model, views, stats, num_classes: int, logger) -> list[dict]:
        rows = [{"resolution": res, **self._eval_at(model, ds, stats, num_classes)} for res, ds in views]
        if logger:
            logger.log_metrics({f"val/{k}@{r['resolution']}": r[k] for r in rows for k in r if k != "resolution"})
            logger.finalize("success")
        return rows

    def _eval_at(self, model, ds, stats, num_classes: int) -> dict:
        pt, cfg, ipu = self.poptorch, self.cfg, self.cfg.ipu
        opts, micro = self.options(training=False), ipu.eval_batch_size or cfg.eval_batch_size
        per_call = micro * self.eval_iterations * ipu.replication_factor
        n = min(len(ds), _limit(cfg.trainer.limit_val_batches, math.ceil(len(ds) / per_call)) * per_call)
        if n < 1:
            raise ConfigError(f"nothing to evaluate (trainer.limit_val_batches={cfg.trainer.limit_val_batches}, "
                              f"{len(ds)} images)")
        loader = pt.DataLoader(opts, _Padded(ds, n, per_call), batch_size=micro, shuffle=False, drop_last=False,
                               num_workers=cfg.data.num_workers)
        infer = pt.inferenceModel(self._wrap(self._device_copy(model), stats).eval(), opts)
        metrics = eval_metrics(num_classes)
        for x, y in loader:
            keep = y >= 0  # padding
            metrics.update(infer(x).float()[keep], y[keep])
        infer.destroy()
        return scores(metrics)

    def protocol(self, batch: int) -> dict:
        t, ipu = self.cfg.throughput, self.cfg.ipu
        return dict(batch_size=batch, warmup_steps=t.warmup, timed_steps=t.steps,
                    precision="fp16" if self.half else "fp32", channels_last=False, compile=True, device="ipu",
                    replication_factor=ipu.replication_factor, device_iterations=ipu.device_iterations,
                    eval_device_iterations=self.eval_iterations,
                    gradient_accumulation=ipu.gradient_accumulation, ipus_per_replica=self.num_ipus,
                    synthetic_data=True, device_name=f"Graphcore IPU ({ipu.replication_factor} replica(s) x "
                                                     f"{self.num_ipus} IPU(s))")

    def throughput(self, model, proto: dict, train_res: int, test_res: list[int]) -> tuple[float, dict[int, float]]:
        """img/s of all replicas together, compiled executables on synthetic on-device data (host I/O off)."""
        micro = proto["batch_size"]
        train = self._timed(model, train_res, micro, training=True)
        return train, {r: self._timed(model, r, micro, training=False) for r in test_res}

    def _timed(self, model, res: int, micro: int, training: bool) -> float:
        pt, t, ipu = self.poptorch, self.cfg.throughput, self.cfg.ipu
        opts = self.options(training, synthetic=True)
        net = self._device_copy(model)
        stats = ((0.5,) * 3, (0.25,) * 3)  # speed does not depend on the statistics
        accumulation, iterations = (ipu.gradient_accumulation, ipu.device_iterations) if training else \
            (1, self.eval_iterations)
        per_call = micro * iterations * ipu.replication_factor * accumulation
        args = (torch.zeros(per_call, 3, res, res, dtype=torch.uint8),)
        if training:
            # The same optimizer kind and state; its constants (LR, decay) do not change the speed.
            opt = self._optimizer(net, OmegaConf.merge(self.cfg.optimizer, {"alpha": 0.9}), 0.0)
            run = pt.trainingModel(self._wrap(net, stats), opts, optimizer=opt)
            args = (*args, torch.zeros(per_call).long())
        else:
            run = pt.inferenceModel(self._wrap(net, stats).eval(), opts)
        for _ in range(max(1, t.warmup)):  # the first call compiles
            run(*args)
        start = time.perf_counter()
        for _ in range(t.steps):
            run(*args)
        seconds = time.perf_counter() - start
        run.destroy()
        return per_call * t.steps / seconds if seconds > 0 else float("nan")


class _OnDevice(nn.Module):
    """What runs on the IPU: uint8 (or host-mixed) images -> normalized input, the model, and with targets the loss
    (label smoothing written out with basic ops; soft Mixup targets already carry it)."""

    def __init__(self, model: nn.Module, stats, label_smoothing: float, identity_loss):
        super().__init__()
        self.model, self.label_smoothing, self.identity_loss = model, label_smoothing, identity_loss
        self.normalize = Normalize(*stats)
        self.dtype = next(model.parameters()).dtype

    def forward(self, x, target=None):
        logits = self.model(self.normalize(x.float()).to(self.dtype)).float()  # loss in fp32
        if target is None:
            return logits
        logp = F.log_softmax(logits, dim=1)
        if target.dim() == 2:
            loss = -(target * logp).sum(1).mean()
        else:
            eps = self.label_smoothing
            loss = (1.0 - eps) * F.nll_loss(logp, target) - eps * logp.mean()
        return logits, self.identity_loss(loss, reduction="mean")


class _Padded(torch.utils.data.Dataset):
    """The first `n` items, padded with label -1 (ignored) to a multiple of `multiple`: a smaller last batch would
    need a second compilation."""

    def __init__(self, ds, n: int, multiple: int):
        self.ds, self.n, self.len = ds, n, math.ceil(n / multiple) * multiple

    def __len__(self):
        return self.len

    def __getitem__(self, i):
        return self.ds[i] if i < self.n else (self.ds[0][0], -1)


def _check_ipu(cfg: DictConfig) -> int:
    """Everything a PopTorch compile would reject, from the config alone; returns the IPUs per replica."""
    ipu = cfg.ipu
    bad = schema.problems(IpuConfig, OmegaConf.to_container(ipu, resolve=True), "ipu.")
    if bad:
        raise ConfigError("\n".join(bad))
    if cfg.trainer.accumulate_grad_batches != 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches} is Lightning's; "
                          "with backend=ipu set ipu.gradient_accumulation and leave it at 1")
    if cfg.ema.enabled and cfg.ema.every != "epoch":
        raise ConfigError(f"ema.every={cfg.ema.every!r} is not supported with backend=ipu: the weights live on the "
                          "IPU and copying them to the host every step would stall training; use ema.every=epoch")
    for key in ("optimizer.name", "finetune.optimizer.name"):
        if OmegaConf.select(cfg, key) not in OPTIMIZERS:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} has no PopTorch mapping with backend=ipu; "
                              f"allowed: {', '.join(OPTIMIZERS)}")
    stages = _check_pipeline(cfg)
    total, replicas = stages * ipu.replication_factor, ipu.replication_factor
    if total & (total - 1) and not ipu.auto_round_num_ipus:
        raise ConfigError(f"ipu.replication_factor={replicas} x {stages} IPU(s) per replica (ipu.pipeline) = {total} "
                          "IPUs; PopTorch only books a power of 2 (1, 2, 4, 8, 16, ...): change the replicas or the "
                          "pipeline, or set ipu.auto_round_num_ipus=true to book the next power of 2 and leave the "
                          "rest idle")
    # A pipeline of N IPUs has 2N - 1 training stages (forward, then backward in reverse, sharing the last IPU)
    # and N inference stages; each stage needs its own micro-batch in flight.
    if stages > 1 and ipu.gradient_accumulation < 2 * stages - 1:
        raise ConfigError(f"ipu.gradient_accumulation={ipu.gradient_accumulation}: training a pipeline over {stages} "
                          f"IPUs (ipu.pipeline) needs gradient accumulation >= 2 x {stages} - 1 = {2 * stages - 1}")
    if _eval_iterations(ipu, stages) < stages:
        raise ConfigError(f"ipu.eval_device_iterations={ipu.eval_device_iterations}: inference through a pipeline "
                          f"over {stages} IPUs (ipu.pipeline) needs device iterations >= {stages} "
                          "(null = ipu.device_iterations, raised to the pipeline depth)")
    return stages


def _check_pipeline(cfg: DictConfig) -> int:
    """Layer names exist, IPU ids rise in execution order; returns the IPUs per replica (highest id + 1)."""
    with torch.device("meta"):  # layer names are checked on a weightless copy
        names = dict(create_model(**model_kwargs(cfg, num_classes=10)).named_modules())
    top = ", ".join(n for n in names if n and "." not in n)
    order = {n: i for i, n in enumerate(names)}  # the models register their modules in execution order
    splits = []
    for i, entry in enumerate(cfg.ipu.pipeline):
        layer = entry.get("layer") if isinstance(entry, DictConfig) else None
        dev = entry.get("ipu") if isinstance(entry, DictConfig) else None
        if not layer or layer not in names or layer in {s[1] for s in splits}:
            raise ConfigError(f"ipu.pipeline[{i}]={entry!r}: layer must name a distinct submodule of the model "
                              f"(dotted, e.g. blocks.3 = stage 3, blocks.3.0, conv_head); top-level: {top}")
        if isinstance(dev, bool) or not isinstance(dev, int) or dev < 1:
            raise ConfigError(f"ipu.pipeline[{i}].ipu={dev!r} must be an IPU index >= 1 (layers before the first "
                              "split run on IPU 0)")
        splits.append((order[layer], layer, dev, i))
    last, last_layer = 0, "the stem"
    for _, layer, dev, i in sorted(splits):
        if dev <= last:
            raise ConfigError(f"ipu.pipeline[{i}].ipu={dev} ({layer}) runs after {last_layer} on IPU {last}: IPU ids "
                              "must rise in execution order (stem on IPU 0), e.g. [{layer: blocks.3, ipu: 1}, "
                              "{layer: conv_head, ipu: 2}]")
        last, last_layer = dev, layer
    return last + 1


def _eval_iterations(ipu, stages: int) -> int:
    if ipu.eval_device_iterations is not None:
        return ipu.eval_device_iterations
    return max(ipu.device_iterations, stages)


def _mix(mixup, x, y, micro: int, dtype):
    """CutMix + Mixup on the host, one draw per micro-batch (Lightning draws one per device batch)."""
    xs, ys = zip(*(mixup(a, b) for a, b in zip(x.float().split(micro), y.split(micro))))
    return torch.cat(xs).to(dtype), torch.cat(ys)


def _limit(limit, n: int) -> int:
    """Lightning's limit_*_batches applied to device calls: null = all, int = that many, float = that fraction."""
    if limit is None:
        return n
    return min(n, int(n * limit) if isinstance(limit, float) else int(limit))
