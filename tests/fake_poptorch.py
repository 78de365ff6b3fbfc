"""A stand-in for `poptorch` (Graphcore's PopTorch, only shipped inside the Poplar SDK) for behaviour tests.

It mirrors the signatures of the PopTorch API the IPU backend calls (Options and its Training/Precision
sub-options, DataLoader, trainingModel/inferenceModel executors, BeginBlock, identity_loss, optim.RMSprop/SGD),
records the executors it builds and each device call in `CALLS`, and runs the model eagerly on the CPU so a tiny
job completes. It says nothing
about IPU numerics or speed: a training call is forward/backward per micro-batch and one plain torch optimizer step
per device iteration (no loss scaling, no TF-style RMSprop, no stochastic rounding).

It does enforce what the real compiler rejects on the first call (`Error`): an IPU count that is not a power of 2
(unless autoRoundNumIPUs), a pipeline whose IPU ids fall in execution order, training a pipeline over N IPUs with
gradient accumulation < 2N - 1, inference through one with device iterations < N. Training outputs follow
`outputMode` (default Final: the last micro-batch of each replica). A host batch is laid out as
[device iteration, accumulation step, replica, micro-batch] (the fake's convention).
"""

import enum
import types

import torch
from torch import nn

CALLS: list[tuple[str, dict]] = []
_TRACE: list[int] | None = None  # IPU ids of the BeginBlocks met during a compiling forward, in execution order


class Error(RuntimeError):
    """As `poptorch.Error`: what a compile or attach would raise."""


def reset():
    CALLS.clear()


def calls(name: str) -> list[dict]:
    return [kw for n, kw in CALLS if n == name]


def _record(name: str, **kw):
    CALLS.append((name, kw))


class ReductionType(enum.IntEnum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class OutputMode(enum.IntEnum):
    All = 0
    Final = 1
    EveryN = 2
    Sum = 3
    Default = 4


class _Training:
    def __init__(self):
        self.gradient_accumulation = 1

    def gradientAccumulation(self, gradient_accumulation: int):
        self.gradient_accumulation = gradient_accumulation
        return self

    def accumulationAndReplicationReductionType(self, reduction_type):
        if not isinstance(reduction_type, ReductionType) or reduction_type == ReductionType.NoReduction:
            raise ValueError("accumulationAndReplicationReductionType must be ReductionType.Mean or Sum")
        return self


class _Precision:
    def enableStochasticRounding(self, enabled: bool):
        return self

    def setPartialsType(self, dtype):
        if dtype not in (torch.float, torch.float32, torch.half, torch.float16):
            raise ValueError("parameter to setPartialsType should be either torch.float or torch.half")
        return self


def _setter(api: str, attr: str):
    """A chainable PopTorch Options setter."""
    def set_value(self, value):
        setattr(self, attr, value)
        return self
    set_value.__name__ = api
    return set_value


class Options:
    def __init__(self):
        self.replication_factor, self.device_iterations, self.random_seed = 1, 1, None
        self.available_memory_proportion, self.synthetic_data, self.cache_path = {}, False, None
        self.output_mode, self.auto_round_num_ipus = OutputMode.Default, False
        self.Training, self.Precision = _Training(), _Precision()

    replicationFactor = _setter("replicationFactor", "replication_factor")
    deviceIterations = _setter("deviceIterations", "device_iterations")
    enableExecutableCaching = _setter("enableExecutableCaching", "cache_path")
    enableSyntheticData = _setter("enableSyntheticData", "synthetic_data")

    def autoRoundNumIPUs(self, auto_round_num_ipus: bool = True):
        self.auto_round_num_ipus = auto_round_num_ipus
        return self

    def outputMode(self, output_mode, output_return_period=None):
        assert isinstance(output_mode, OutputMode)
        self.output_mode = output_mode
        return self

    def randomSeed(self, random_seed: int):
        assert isinstance(random_seed, int)
        torch.manual_seed(random_seed)  # as PopTorch does: it seeds the host too
        self.random_seed = random_seed
        return self

    def setAvailableMemoryProportion(self, available_memory_proportion: dict):
        assert all(k.startswith("IPU") for k in available_memory_proportion), available_memory_proportion
        self.available_memory_proportion = {int(k[3:]): v for k, v in available_memory_proportion.items()}
        return self


class DataLoader(torch.utils.data.DataLoader):
    """As PopTorch's: `batch_size` is the micro-batch; each element holds a whole device call."""

    def __init__(self, options, dataset, batch_size=1, shuffle=False, num_workers=0, drop_last=True,
                 persistent_workers=None, auto_distributed_partitioning=True, mode=None, async_options=None,
                 rebatched_worker_size=None, **kwargs):
        assert isinstance(options, Options)
        combined = (batch_size * options.device_iterations * options.replication_factor
                    * options.Training.gradient_accumulation)
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        super().__init__(dataset, batch_size=combined, shuffle=shuffle, num_workers=num_workers,
                         drop_last=drop_last, persistent_workers=persistent_workers, **kwargs)


def identity_loss(x, reduction):
    assert reduction in ("sum", "mean", "none"), "Unsupported reduction type!"
    return x.sum() if reduction == "sum" else x.mean() if reduction == "mean" else x


def BeginBlock(layer_to_call, user_id=None, ipu_id=None):
    assert isinstance(layer_to_call, nn.Module)

    def enter(module, args):
        if _TRACE is not None:
            _TRACE.append(ipu_id)

    layer_to_call.register_forward_pre_hook(enter)
    return layer_to_call


class PoplarExecutor:
    """Runs the wrapped model eagerly; checks the batch splits into the configured device calls and, on the first
    call, the pipeline rules the compiler enforces."""

    def __init__(self, model, options, training, optimizer=None):
        self.model, self.options, self.training, self.optimizer = model, options or Options(), training, optimizer
        self.destroyed = self.compiled = False

    def setOptimizer(self, optimizer):
        self.optimizer = optimizer

    def copyWeightsToHost(self):
        """The eager model already holds the weights on the host."""

    def destroy(self):
        self.destroyed = True

    def _forward(self, *args):
        """The model; the first time, traced for its BeginBlocks and checked as a compile would."""
        global _TRACE
        if self.compiled:
            return self.model(*args)
        _TRACE = []
        try:
            out = self.model(*args)
        finally:
            trace, _TRACE = _TRACE, None
        self._compile_checks(trace)
        self.compiled = True
        return out

    def _compile_checks(self, trace: list[int]):
        o, ids = self.options, [0, *trace]
        if any(b < a for a, b in zip(ids, ids[1:])):
            raise Error(f"IPU ids of the blocks must not decrease in execution order, got {ids}")
        stages = max(ids) + 1
        total = stages * o.replication_factor
        if total & (total - 1) and not o.auto_round_num_ipus:
            raise Error(f"The model uses {total} IPUs, which is not a power of 2 (see autoRoundNumIPUs)")
        if self.training and stages > 1 and o.Training.gradient_accumulation < 2 * stages - 1:
            raise Error(f"For pipelining, gradient accumulation ({o.Training.gradient_accumulation}) must be at "
                        f"least {2 * stages - 1} for {stages} IPUs")
        if not self.training and o.device_iterations < stages:
            raise Error(f"Inference over {stages} pipelined IPUs needs deviceIterations >= {stages}, got "
                        f"{o.device_iterations}")

    def __call__(self, *args):
        assert not self.destroyed, "executor used after destroy()"
        o = self.options
        replicas, accumulation = o.replication_factor, (o.Training.gradient_accumulation if self.training else 1)
        split = o.device_iterations * replicas * accumulation
        n = len(args[0])
        assert n % split == 0, f"batch of {n} does not split into {split} micro-batches"
        if not self.training:
            assert o.output_mode in (OutputMode.Default, OutputMode.All), "fake: inference returns every output"
            with torch.no_grad():
                out = self._forward(*args)
            _record("call", training=False, batch=n, dtype=args[0].dtype)
            return out
        micro = n // split
        chunks = [tuple(a[i:i + micro] for a in args) for i in range(0, n, micro)]
        outs, losses, per_update = [], [], replicas * accumulation
        for it in range(o.device_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for chunk in chunks[it * per_update:(it + 1) * per_update]:
                out, loss = self._forward(*chunk)
                (loss / per_update).backward()  # ReductionType.Mean over replicas and accumulation
                outs.append(out.detach())
                losses.append(loss.detach())
            self.optimizer.step()
        _record("call", training=True, batch=n, dtype=args[0].dtype, micro_losses=[x.item() for x in losses])
        return self._output(outs, replicas), self._output(losses, replicas)

    def _output(self, values: list, replicas: int):
        """What the host gets back under the output mode: per replica, the last micro-batch (Final) or the sum of
        all of them (Sum); every one (All). Scalars come back one per replica."""
        mode = self.options.output_mode
        by_replica = [values[r::replicas] for r in range(replicas)]
        if mode == OutputMode.All:
            picked = values
        elif mode in (OutputMode.Final, OutputMode.Default):
            picked = [v[-1] for v in by_replica]
        elif mode == OutputMode.Sum:
            picked = [torch.stack(v).sum(0) for v in by_replica]
        else:
            raise NotImplementedError(f"fake: output mode {mode!r}")
        if picked[0].dim() == 0:
            return torch.stack(picked) if len(picked) > 1 else picked[0]
        return torch.cat(picked)


def trainingModel(model, options=None, optimizer=None):
    assert optimizer is not None
    _record("trainingModel", model=model, options=options, optimizer=optimizer)
    return PoplarExecutor(model, options, True, optimizer)


def inferenceModel(model, options=None):
    assert options is None or options.Training.gradient_accumulation == 1, \
        "Gradient accumulation should be left to its default value (1) for inference"
    return PoplarExecutor(model, options, False)


class _Optim:
    @staticmethod
    def _check_types(*dtypes):
        assert all(t in (torch.float16, torch.float32) for t in dtypes if t is not None), \
            "Accumulation types must be either torch.float32 or torch.float16"


class _RMSprop(torch.optim.RMSprop, _Optim):
    def __init__(self, params, lr=None, alpha=None, eps=None, weight_decay=None, momentum=None, centered=None,
                 foreach=None, maximize=None, differentiable=None, loss_scaling=None, accum_type=None,
                 first_order_momentum_accum_type=None, second_order_momentum_accum_type=None, use_tf_variant=None):
        parent = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                      foreach=foreach, maximize=maximize, differentiable=differentiable)
        super().__init__(params, **{k: v for k, v in parent.items() if v is not None})  # PopTorch drops Nones too
        self._check_types(accum_type, first_order_momentum_accum_type, second_order_momentum_accum_type)
        self.loss_scaling = 1.0 if loss_scaling is None else loss_scaling
        self.use_tf_variant = bool(use_tf_variant)


class _SGD(torch.optim.SGD, _Optim):
    def __init__(self, params, lr, momentum=None, dampening=None, weight_decay=None, nesterov=None, maximize=None,
                 foreach=None, differentiable=None, loss_scaling=None, velocity_scaling=None, use_combined_accum=None,
                 accum_type=None, velocity_accum_type=None, max_grad_norm=None):
        parent = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                      maximize=maximize, foreach=foreach, differentiable=differentiable)
        super().__init__(params, **{k: v for k, v in parent.items() if v is not None})
        self._check_types(accum_type, velocity_accum_type)
        self.loss_scaling = 1.0 if loss_scaling is None else loss_scaling


optim = types.SimpleNamespace(RMSprop=_RMSprop, SGD=_SGD)  # `poptorch.optim`
