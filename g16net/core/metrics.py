"""metrics.json: the one record of what a finished run reports. `g16net.collect` reads it back and takes its checks
(which fields are required, which are numbers) from these dataclasses, so the schema is written once, here.

Fields without a default are the contract (README, DESIGN): a metrics.json without them is not collected.
"""

from dataclasses import MISSING, asdict, dataclass, field, fields

SCHEMA = 1


@dataclass
class EvalRow:
    """One test resolution."""
    resolution: int
    top1: float  # percent
    macs: float  # forward MACs per image at this resolution
    infer_throughput: float  # img/s, model compute only
    top5: float | None = None
    loss: float | None = None
    infer_throughput_pipeline: float | None = None  # img/s with the data pipeline


@dataclass
class ModelInfo:
    size: str
    group_size: int
    expand_ratio: int
    norm: str
    name: str | None = None  # the timm name, e.g. g16_efficientnet_b0
    group_rule: str | None = None


@dataclass
class RunMetrics:
    status: str  # complete
    model: ModelInfo
    schedule: str  # half | native
    params: int
    train_resolution: int
    train_macs: float  # forward MACs per image at the training resolution
    train_throughput: float  # img/s, model compute only (fwd + bwd + step)
    eval: list[EvalRow]  # after finetuning
    schema: int = SCHEMA
    name: str | None = None
    version: str | None = None
    finetuned: bool | None = None
    dataset: str | None = None
    num_classes: int | None = None
    native_resolution: int | None = None
    finetune_resolution: int | None = None
    headline_resolution: int | None = None  # the test resolution the run is reported at
    train_throughput_pipeline: float | None = None  # img/s of the real training loop, data pipeline included
    device: str | None = None
    precision: str | None = None
    throughput_protocol: dict = field(default_factory=dict)
    global_batch_size: int | None = None
    per_device_batch_size: int | None = None
    world_size: int | None = None
    accumulate_grad_batches: int | None = None
    lr: float | None = None
    finetune_lr: float | None = None
    eval_before_finetune: list[EvalRow] = field(default_factory=list)
    epochs: int | None = None
    finetune_epochs: int | None = None
    wall_time_s: float | None = None
    seed: int | None = None
    config: dict | None = None  # the resolved config that produced the run

    def to_json(self) -> dict:
        return asdict(self)


def required(cls) -> list:
    """The fields of `cls` a metrics.json must have."""
    return [f for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


def field_types(*records) -> dict[str, type]:
    """name -> int / float / bool / str (None stripped) of the plain fields of `records`; earlier records win."""
    out = {}
    for record in reversed(records):
        for f in fields(record):
            kind = next((t for t in (bool, int, float, str) if f.type in (t, t | None)), None)
            if kind is not None:
                out[f.name] = kind
    return out
