"""The `ipu:` section's keys (backend=ipu): what each allows. Its cross-key rules (IPU count a power of 2, pipeline
depth against accumulation and device iterations) are `g16net.backends.ipu._check_ipu`'s."""

from dataclasses import dataclass
from typing import Any

from ..core.schema import key, rule


@dataclass
class IpuConfig:
    replication_factor: Any = key("data-parallel replicas (x IPUs per replica: a power of 2)", int, ge=1)
    device_iterations: Any = key("weight updates per host call in training", int, ge=1)
    gradient_accumulation: Any = key("micro-batches per weight update (>= 2 x pipeline IPUs - 1)", int, ge=1)
    eval_device_iterations: Any = key("micro-batches per replica per host call in evaluation", int, ge=1,
                                      null="ipu.device_iterations, raised to the pipeline IPUs")
    eval_batch_size: Any = key("evaluation micro-batch per replica", int, ge=1, null="eval_batch_size")
    half: Any = key("fp16 weights and activations (no fp32 master weights; stochastic rounding)", bool)
    half_partials: Any = key("fp16 partials (with half=true only)", bool)
    available_memory_proportion: Any = key("PopTorch's memory for temporaries", float, gt=0, le=1,
                                           null="PopTorch's default")
    loss_scaling: Any = key("static loss scale (1 = off)", float, gt=0)
    pipeline: Any = key("BeginBlock splits, IPU ids rising in execution order", list, empty=True,
                        item=rule("", dict), allowed="a list of {layer: <submodule, e.g. blocks.4>, ipu: <IPU id "
                                                                     ">= 1>}; [] = one IPU per replica")
    auto_round_num_ipus: Any = key("book the next power of 2 IPUs instead of refusing", bool)
    executable_cache_dir: Any = key("where PopTorch caches compiled executables", str, null="no cache")
