"""The main job, phase by phase: train at the training resolution -> weight average -> evaluate -> finetune the head
at the native resolution -> evaluate at every test resolution -> measure throughput -> metrics.json.

Resume (`ckpt_path=last`, same run dir) is phase-aware: a finished phase leaves `checkpoints/<phase>.pt` and
`<phase>.json`, an unfinished one Lightning's `checkpoints/<phase>/last.ckpt` (optimizer, schedule, EMA, epoch).
"""

import json
import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from . import __version__
from .callbacks import Bar, EpochLog, EvalPipelineThroughput, PipelineThroughput, say
from .config import ConfigError, RunPlan, check_config, model_kwargs, plan_run
from .data import build_data
from .data.config import auto_workers
from .efficiency import count_params, forward_macs, measure_throughput
from .lit_module import LitClassifier
from .loggers import phase_logger
from .models import create_model
from .recipe import build_mixup, scaled_schedule
from .run_io import ERROR, METRICS, atomic_write_json
from .run_safety import claim_run_dir, config_differences, launch_rank

PHASES = ("train", "finetune")
WALL_TIME = "wall_time.json"  # under checkpoints/: time spent by earlier segments of a resumed run
# Lightning's info lines (GPU/TPU available, the litmodels tip, "fit stopped") repeat for every phase's Trainer;
# its warnings go through `warnings` and stay visible.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning_fabric.utilities.rank_zero").setLevel(logging.WARNING)
_PRECISION = {"32-true": "fp32", "64-true": "fp32", "bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16"}


class Run:
    """One job on the Lightning backend. Backends override train / finetune / evaluate / throughput; everything
    else (config checks, data, resolutions, resume files, metrics.json) is shared."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.t0 = time.time()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        check_config(cfg)
        if cfg.data.num_workers == "auto":  # resolved here so every backend's loaders see an integer
            devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
            cfg.data.num_workers = auto_workers(devices)
        try:
            self.data = build_data(cfg.data, model_size=cfg.model.size)
        except (ValueError, FileNotFoundError) as e:  # a bad data config: one clean message, no traceback
            raise ConfigError(str(e)) from None
        self.plan: RunPlan = plan_run(cfg, self.data)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.is_global_zero = launch_rank() == 0
        self.world_size = 1
        wall = self.ckpt_dir / WALL_TIME
        self.earlier_wall_s = json.loads(wall.read_text())["wall_time_s"] if cfg.ckpt_path == "last" and \
            wall.exists() else 0.0

    def wall_time_s(self) -> float:
        """Seconds spent on this run so far, over every segment of a resumed run."""
        return self.earlier_wall_s + time.time() - self.t0

    def save_wall_time(self):
        if self.is_global_zero and self.ckpt_dir.exists():
            atomic_write_json(self.ckpt_dir / WALL_TIME, {"wall_time_s": round(self.wall_time_s(), 1)})

    def preflight(self):
        """The checks that need the device count (batch split, Mixup's even batch) for both phases, before the
        first epoch rather than after the training phase."""
        if self.cfg.backend == "lightning":
            self.trainer("preflight")  # sets world_size; builds no process group
            self.check_checkpoint_fits()
        self.mixup(self.per_device_batch("batch_size", self.cfg.batch_size))
        if self.plan.finetune_epochs:
            f = self.cfg.finetune
            self.mixup(self.per_device_batch("finetune.batch_size", f.batch_size), f.mixup, key="finetune.mixup")

    def check_checkpoint_fits(self):
        """`ckpt_path=PATH` from another model or config: say so, with the differing keys where the checkpoint's
        run dir still has its config, instead of Lightning's raw state_dict error after the data is loaded."""
        path = self.cfg.ckpt_path
        if path in (None, "last"):
            return
        # Lightning checkpoints hold pickled loop state besides tensors; the user named this file as their own.
        state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
        with torch.device("meta"):
            model = create_model(**model_kwargs(self.cfg, self.plan.num_classes))
        want = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items() if k.startswith("model.")}
        bad = sorted(set(want) ^ set(have)) + sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        if not bad:
            return
        parents = Path(path).resolve().parents  # <run>/checkpoints/<phase>/last.ckpt
        saved = parents[2] / ".hydra" / "config.yaml" if len(parents) > 2 else Path("/nonexistent")
        diff = config_differences(OmegaConf.load(saved), self.cfg) if saved.is_file() else []
        raise ConfigError(f"ckpt_path={path} was made with another model: {len(bad)} weights differ (e.g. "
                          f"{', '.join(bad[:3])}); "
                          + (f"its run's config ({saved}) differs in: {'; '.join(diff[:8])}. " if diff else "")
                          + "Resume with the config it was trained with, or drop ckpt_path to start afresh")

    # ---- plumbing -----------------------------------------------------------------------------------------------
    def trainer(self, phase: str, epochs: int = 1, callbacks=(), logger=False) -> pl.Trainer:
        t = self.cfg.trainer
        bar = t.progress_bar if t.progress_bar != "auto" else _interactive()
        if phase in PHASES:  # one plain line per epoch (logs, SLURM .out files); the bar adds live progress
            callbacks = [*callbacks, EpochLog(phase, on_epoch_end=self.save_wall_time)]
        if bar:
            callbacks = [*callbacks, Bar()]
        trainer = pl.Trainer(
            accelerator=self.plan.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
            precision=self.plan.precision, max_epochs=epochs, accumulate_grad_batches=t.accumulate_grad_batches,
            sync_batchnorm=t.sync_batchnorm,
            gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps, enable_progress_bar=bar,
            enable_model_summary=False, default_root_dir=self.run_dir, callbacks=list(callbacks), logger=logger,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            deterministic=t.deterministic, num_sanity_val_steps=0, limit_train_batches=t.limit_train_batches,
            limit_val_batches=t.limit_val_batches,
        )
        self.is_global_zero, self.world_size = trainer.is_global_zero, trainer.world_size
        return trainer

    def per_device_batch(self, key: str, global_batch: int) -> int:
        split = self.world_size * self.cfg.trainer.accumulate_grad_batches
        if global_batch % split:
            raise ConfigError(f"{key}={global_batch} is the global batch and must divide evenly over "
                              f"{self.world_size} device(s) x {self.cfg.trainer.accumulate_grad_batches} "
                              "accumulation steps")
        return global_batch // split

    def loader(self, dataset, batch_size: int, train: bool):
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
            pin_memory=self.plan.accelerator != "cpu", persistent_workers=workers > 0 and train)

    def lit(self, model, **kw) -> LitClassifier:
        return LitClassifier(model, mean=self.data.mean, std=self.data.std,
                             label_smoothing=self.cfg.loss.label_smoothing, channels_last=self.cfg.channels_last,
                             compile=self.cfg.compile, **kw)

    def _phase_files(self, phase):
        return self.ckpt_dir / f"{phase}.pt", self.ckpt_dir / f"{phase}.json"

    def _resume_from(self, phase: str) -> str | None:
        ckpt = self.cfg.ckpt_path
        if ckpt == "last":
            last = self.ckpt_dir / phase / "last.ckpt"
            return str(last) if last.exists() else None
        return ckpt if phase == "train" else None

    def _finish_phase(self, phase: str, model, summary: dict):
        if self.is_global_zero:
            weights, info = self._phase_files(phase)
            tmp = weights.with_suffix(".pt.tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(weights)
            atomic_write_json(info, summary)

    def _done_phase(self, phase: str, model) -> dict | None:
        weights, info = self._phase_files(phase)
        if self.cfg.ckpt_path == "last" and weights.exists() and info.exists():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            print(f"[g16net] resume: phase '{phase}' already finished, loaded {weights}")
            return json.loads(info.read_text())
        return None

    # ---- phases -------------------------------------------------------------------------------------------------
    def mixup(self, batch: int, enabled: bool = True, key: str = "augment"):
        """The authors' CutMix + Mixup as configured (None when off); it pairs each sample with another of the same
        device batch, so that batch needs 2 samples or more. `key` is the setting that turned mixing on."""
        c = self.cfg
        mixup = build_mixup(c.augment, c.model.size, self.plan.num_classes, c.loss.label_smoothing) if enabled else None
        if mixup is not None and batch < 2:
            off = ("finetune.mixup=false" if key == "finetune.mixup"
                   else "augment.mixup_alpha=0 augment.cutmix_lambda=null")
            raise ConfigError(f"{key}: Mixup/CutMix needs a per-device batch of 2 or more, got {batch}; change the "
                              f"batch size (and device/replica/accumulation counts) or turn mixing off ({off})")
        return mixup

    def train(self, model) -> dict:
        return self._phase("train", model, self._train)

    def finetune(self, model) -> dict:
        return self._phase("finetune", model, self._finetune)

    def _phase(self, phase: str, model, fit) -> dict:
        """Skip a phase a resumed run already finished; else run it with its own logger."""
        done = self._done_phase(phase, model)
        if done is not None:
            return done
        resume = self._resume_from(phase)
        say(f"== {phase}: {self.cfg.finetune.epochs if phase == 'finetune' else self.cfg.epochs} epoch(s) at "
            f"{self.plan.finetune_res if phase == 'finetune' else self.plan.train_res} px"
            + (f", resuming from {resume}" if resume else ""), self.is_global_zero)
        with phase_logger(self.cfg, self.run_dir, phase) as logger:
            summary = fit(model, logger)
        self.save_wall_time()
        return summary

    def _train(self, model, logger) -> dict:
        cfg, plan = self.cfg, self.plan
        tput = PipelineThroughput()
        trainer = self.trainer("train", cfg.epochs, [_epoch_checkpoint(self.ckpt_dir / "train"), tput], logger)
        batch = self.per_device_batch("batch_size", cfg.batch_size)
        mixup = self.mixup(batch)
        optimizer = OmegaConf.merge(cfg.optimizer, {"alpha": plan.rmsprop_alpha})
        scheduler, ema = scaled_schedule(cfg.scheduler, cfg.ema, plan.time_scale)
        lit = self.lit(model, optimizer_cfg=optimizer, scheduler_cfg=scheduler, lr=plan.lr, epochs=cfg.epochs,
                       mixup=mixup, ema_cfg=ema)
        lit.set_eval_resolutions([plan.train_res], plan.num_classes)
        trainer.fit(lit, self.loader(self.data.train_dataset(plan.train_res), batch, True),
                    self.loader(self.data.val_dataset(plan.train_res), cfg.eval_batch_size, False),
                    ckpt_path=self._resume_from("train"))
        if lit.ema is not None:
            model.load_state_dict(lit.ema.module.state_dict())
        summary = dict(epochs=trainer.current_epoch, per_device_batch=batch, world_size=self.world_size,
                       train_throughput_pipeline=tput.img_per_s * self.world_size)
        self._finish_phase("train", model, summary)
        return summary

    def _finetune(self, model, logger) -> dict:
        cfg, plan, f = self.cfg, self.plan, self.cfg.finetune
        trainer = self.trainer("finetune", f.epochs, [_epoch_checkpoint(self.ckpt_dir / "finetune")], logger)
        batch = self.per_device_batch("finetune.batch_size", f.batch_size)
        recal = (cfg.norm.name == "bn") if f.recalibrate_bn == "auto" else bool(f.recalibrate_bn)
        mixup = self.mixup(batch, f.mixup)
        optimizer = OmegaConf.merge(f.optimizer, {"alpha": plan.finetune_rmsprop_alpha})
        lit = self.lit(model, optimizer_cfg=optimizer, scheduler_cfg=f.scheduler, lr=plan.finetune_lr,
                       epochs=f.epochs, mixup=mixup, trainable=f.layers, recalibrate_bn=recal, head_dropout=f.dropout)
        lit.set_eval_resolutions([plan.finetune_res], plan.num_classes)
        train_set = self.data.train_dataset(plan.finetune_res, eval_transform=f.eval_transform)
        trainer.fit(lit, self.loader(train_set, batch, True),
                    self.loader(self.data.val_dataset(plan.finetune_res), cfg.eval_batch_size, False),
                    ckpt_path=self._resume_from("finetune"))
        model.requires_grad_(True)
        summary = dict(epochs=trainer.current_epoch, per_device_batch=batch, recalibrate_bn=recal)
        self._finish_phase("finetune", model, summary)
        return summary

    def evaluate(self, model, tag: str) -> list[dict]:
        lit = self.lit(model)
        res = self.plan.test_res
        lit.set_eval_resolutions(res, self.plan.num_classes)
        loaders = [self.loader(self.data.val_dataset(r), self.cfg.eval_batch_size, False) for r in res]
        timer = EvalPipelineThroughput()
        with phase_logger(self.cfg, self.run_dir, tag) as logger:
            self.trainer(tag, callbacks=[timer], logger=logger).validate(lit, dataloaders=loaders, verbose=False)
        return [{"resolution": r, **lit.eval_results[r],
                 "infer_throughput_pipeline": timer.img_per_s(i) * self.world_size} for i, r in enumerate(res)]

    def throughput(self, num_classes: int, batch: int) -> tuple[float, dict[int, float], dict]:
        """Model compute on a fresh copy of the architecture (weights do not change speed), fixed protocol."""
        t = self.cfg.throughput
        device = "cuda" if self.plan.accelerator in ("gpu", "cuda") else "cpu"
        proto = dict(batch_size=t.batch_size or batch, warmup_steps=t.warmup, timed_steps=t.steps,
                     precision=_PRECISION[self.plan.precision], channels_last=bool(self.cfg.channels_last),
                     compile=bool(self.cfg.compile), device=device)
        if not t.enabled:
            return float("nan"), {r: float("nan") for r in self.plan.test_res}, proto
        model = create_model(**model_kwargs(self.cfg, num_classes))
        kw = dict(batch_size=proto["batch_size"], warmup=t.warmup, steps=t.steps, precision=proto["precision"],
                  channels_last=proto["channels_last"], compile=proto["compile"], device=device)
        train = measure_throughput(model, self.plan.train_res, mode="train", **kw).img_per_s
        infer = {r: measure_throughput(model, r, mode="infer", **kw).img_per_s for r in self.plan.test_res}
        return train, infer, proto


def make_job(cfg: DictConfig, run_dir: Path) -> Run:
    """The backend: Lightning (CPU/GPU, DDP) or, with backend=ipu, PopTorch (imported only on that path)."""
    if cfg.backend == "ipu":
        from .backends.ipu import IPURun

        return IPURun(cfg, run_dir)
    return Run(cfg, run_dir)


def run(cfg: DictConfig, run_dir: Path, requeued: bool = False, hydra_files: dict | None = None,
        state: dict | None = None) -> dict | None:
    """Run the whole job in `run_dir`; returns the metrics written to metrics.json (None on non-zero ranks).

    `state["claimed"]` tells the caller whether the run dir became this run's (only then may it write
    error.json there); `hydra_files` are Hydra's .hydra/*.yaml, written once the dir is claimed."""
    state = {} if state is None else state
    check_config(cfg)  # cheap checks first: a typo never touches the run dir
    claim_run_dir(Path(run_dir), cfg, requeued=requeued, hydra_files=hydra_files)
    state["claimed"] = True
    job = make_job(cfg, run_dir)
    state["job"] = job
    try:
        job.data.maybe_verify()  # data.verify_images: true / false / auto (every file if there are <= 20000)
        getattr(job.data, "splits", None)  # lists image folders now: an empty class folder fails here, not later
    except (ValueError, FileNotFoundError) as e:  # a corrupt image or an empty class: named, before training
        raise ConfigError(str(e)) from None
    job.preflight()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    plan = job.plan
    model = create_model(**model_kwargs(cfg, plan.num_classes))
    trained = job.train(model)
    before = job.evaluate(model, "eval_before_finetune") if plan.finetune_epochs and cfg.eval.before_finetune else []
    _say_scores(job, before, "before finetuning")
    tuned = job.finetune(model) if plan.finetune_epochs else None
    final = job.evaluate(model, "eval")
    _say_scores(job, final, "after finetuning" if tuned else "final")
    if not job.is_global_zero:
        return None
    train_tput, infer_tput, proto = job.throughput(plan.num_classes, trained["per_device_batch"])
    for row in final + before:
        row["macs"] = forward_macs(model, row["resolution"])
        row["infer_throughput"] = infer_tput[row["resolution"]]
    metrics = dict(
        schema=1, status="complete", name=cfg.name, version=__version__,
        model=dict(name=f"g{cfg.model.group_size}_efficientnet_{cfg.model.size}", size=cfg.model.size,
                   group_size=cfg.model.group_size, expand_ratio=cfg.model.expand_ratio, norm=cfg.norm.name,
                   group_rule=cfg.model.group_rule),
        schedule=plan.schedule, finetuned=bool(plan.finetune_epochs), dataset=cfg.data.name,
        num_classes=plan.num_classes, params=count_params(model), train_resolution=plan.train_res,
        native_resolution=plan.native_res, finetune_resolution=plan.finetune_res if plan.finetune_epochs else None,
        headline_resolution=plan.headline_res, train_macs=forward_macs(model, plan.train_res),
        train_throughput=train_tput, train_throughput_pipeline=trained["train_throughput_pipeline"],
        device=proto.get("device_name") or _device_name(proto["device"]), precision=plan.precision,
        throughput_protocol=proto,
        global_batch_size=cfg.batch_size, per_device_batch_size=trained["per_device_batch"],
        world_size=trained["world_size"],
        accumulate_grad_batches=trained.get("accumulate_grad_batches", cfg.trainer.accumulate_grad_batches),
        lr=plan.lr, finetune_lr=plan.finetune_lr if plan.finetune_epochs else None,
        eval=final, eval_before_finetune=before, epochs=trained["epochs"],
        finetune_epochs=tuned["epochs"] if tuned else 0, wall_time_s=round(job.wall_time_s(), 1),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    atomic_write_json(job.run_dir / METRICS, metrics)
    (job.run_dir / ERROR).unlink(missing_ok=True)  # a resumed run that completes is no longer failed
    return metrics


def _epoch_checkpoint(dirpath: Path) -> ModelCheckpoint:
    """`last.ckpt` rewritten (atomically) after every epoch. save_top_k=1 without a monitor keeps the newest
    checkpoint; with save_top_k=0 Lightning would write last.ckpt only when fit ends."""
    return ModelCheckpoint(dirpath=dirpath, filename="last", save_top_k=1, save_last=False,
                           enable_version_counter=False)


def _say_scores(job: Run, rows: list[dict], what: str):
    for r in rows:
        say(f"   {what}: test {r['resolution']:4d} px  top-1 {r['top1']:6.2f}%", job.is_global_zero)


def _interactive() -> bool:
    return sys.stderr.isatty()


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"
