"""metrics.json: what a finished run reports (the contract in the README; `g16net.collect` reads it back)."""

from omegaconf import DictConfig, OmegaConf

from . import __version__
from .config import RunPlan
from .efficiency import count_params, forward_macs


def run_metrics(cfg: DictConfig, plan: RunPlan, model, trained: dict, tuned: dict | None, final: list[dict],
                before: list[dict], speed: tuple, proto: dict, wall_time_s: float) -> dict:
    train_tput, infer_tput = speed
    for row in final + before:
        row["macs"] = forward_macs(model, row["resolution"])
        row["infer_throughput"] = infer_tput[row["resolution"]]
    m, device = cfg.model, plan.device
    return dict(
        schema=1, status="complete", name=cfg.name, version=__version__,
        model=dict(name=f"g{m.group_size}_efficientnet_{m.size}", size=m.size, group_size=m.group_size,
                   expand_ratio=m.expand_ratio, norm=cfg.norm.name, group_rule=m.group_rule),
        schedule=plan.schedule, finetuned=bool(plan.finetune_epochs), dataset=cfg.data.name,
        num_classes=plan.num_classes, params=count_params(model), train_resolution=plan.train_res,
        native_resolution=plan.native_res, finetune_resolution=plan.finetune_res if plan.finetune_epochs else None,
        headline_resolution=plan.headline_res, train_macs=forward_macs(model, plan.train_res),
        train_throughput=train_tput, train_throughput_pipeline=trained["throughput_pipeline"],
        device=proto["device_name"], precision=device.precision, throughput_protocol=proto,
        global_batch_size=cfg.batch_size, per_device_batch_size=plan.batch, world_size=device.world_size,
        accumulate_grad_batches=device.accumulation,
        lr=plan.lr, finetune_lr=plan.finetune_lr if plan.finetune_epochs else None,
        eval=final, eval_before_finetune=before, epochs=trained["epochs"],
        finetune_epochs=tuned["epochs"] if tuned else 0, wall_time_s=round(wall_time_s, 1),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
