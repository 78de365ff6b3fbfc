"""The main job, top to bottom: build the data, plan the run, build the model, for each phase (resume files, fit),
evaluate, write metrics.json. The hardware is a backend (`g16net.backends`, chosen with `backend=`).

Phases: train at the training resolution (leaves the weight average) -> evaluate -> finetune the head at the native
resolution -> evaluate at every test resolution -> measure throughput. Resume (`ckpt_path=last`, same run dir) is
phase-aware: a finished phase leaves `checkpoints/<phase>.pt` and `<phase>.json`, an unfinished one
`checkpoints/<phase>/last.ckpt` (optimizer, schedule, weight average, epoch).
"""

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ..backends import get_backend
from ..backends.callbacks import say
from ..checks.config_check import check_config
from ..core.backend_api import Phase
from ..core.config import ConfigError, RunPlan, model_kwargs, plan_run
from ..core.metrics import EvalRow, ModelInfo, RunMetrics
from ..core.recipe import (
    SHORT_RUN_LR_PER_SAMPLE,
    SHORT_RUN_UPDATES,
    build_mixup,
    label_smoothing,
    regularization_scale,
    scaled_schedule,
)
from ..core.run_io import ERROR, METRICS, atomic_write_json, atomic_write_torch
from ..core.run_safety import claim_run_dir, config_differences, raise_if_stopped
from ..core.version import __version__
from ..data import build_data
from ..data.config import auto_workers
from ..efficiency.measure import count_params, forward_macs
from ..models import NORMS, create_model
from .loggers import phase_logger

WALL_TIME = "wall_time.json"  # under checkpoints/: time spent by earlier segments of a resumed run


def run(cfg: DictConfig, run_dir: Path, requeued: bool = False, hydra_files: dict | None = None,
        state: dict | None = None) -> dict | None:
    """Run the whole job in `run_dir`; returns the metrics written to metrics.json (None on non-zero ranks).

    `state["claimed"]` tells the caller whether the run dir became this run's (only then may it write
    error.json there); `hydra_files` are Hydra's .hydra/*.yaml, written once the dir is claimed."""
    state = {} if state is None else state
    run_dir = Path(run_dir)
    check_config(cfg)  # cheap checks first: a typo never touches the run dir
    backend = get_backend(cfg.backend)(cfg, run_dir)  # its own config checks; knows the device count
    claim_run_dir(run_dir, cfg, requeued=requeued, hydra_files=hydra_files)
    state["claimed"] = True
    files = state["files"] = RunFiles(cfg, run_dir, backend.device.is_global_zero)
    data = load_data(cfg)
    plan = plan_run(cfg, data, backend.device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = create_model(**model_kwargs(cfg, plan.num_classes))
    files.check_checkpoint_fits(model)

    def fit(name: str, make_phase) -> dict:
        raise_if_stopped()
        done = files.finished(name, model)
        if done is not None:
            return done
        phase = make_phase(cfg, plan, data, files)
        if len(phase.train_set) < phase.batch * plan.device.world_size:  # else every epoch would be empty
            raise ConfigError(f"{name}: {len(phase.train_set)} training images are fewer than one batch "
                              f"({phase.batch} per device x {plan.device.world_size} device(s)); lower the batch "
                              "size or use more data")
        say(f"== {name}: {phase.epochs} epoch(s) at {phase.resolution} px"
            + (f", resuming from {phase.resume}" if phase.resume else ""), files.is_global_zero)
        updates = len(phase.train_set) // cfg.batch_size * phase.epochs  # the global batch: one update
        full = cfg.trainer.get("limit_train_batches") in (None, 1.0)  # not a debug run cut short on purpose
        # Only at the recipe's own LR: a preset or user that set the LR chose it for its run length.
        default_lr = cfg.optimizer.lr is None and cfg.optimizer.lr_per_sample == SHORT_RUN_LR_PER_SAMPLE
        if name == "train" and full and default_lr and updates < SHORT_RUN_UPDATES:
            say(f"   note: {updates} training updates; the short-run recipe was measured at {SHORT_RUN_UPDATES} and "
                f"fewer underfit small sets: epochs={math.ceil(phase.epochs * SHORT_RUN_UPDATES / updates)} "
                "gives that many", files.is_global_zero)
        with phase_logger(cfg, run_dir, name) as logger:
            fitted = backend.fit(model, phase, logger)
        summary = dict(epochs=fitted.epochs, per_device_batch=phase.batch, recalibrate_bn=phase.recalibrate_bn,
                       throughput_pipeline=fitted.throughput_pipeline)
        files.finish(name, model, summary)
        return summary

    def evaluate(tag: str, what: str) -> list[dict]:
        views = [(r, data.val_dataset(r)) for r in plan.test_res]
        with phase_logger(cfg, run_dir, tag) as logger:
            rows = backend.evaluate(model, views, (data.mean, data.std), plan.num_classes, logger)
        for r in rows:
            say(f"   {what}: test {r['resolution']:4d} px  top-1 {r['top1']:6.2f}%", files.is_global_zero)
        return rows

    trained = fit("train", train_phase)
    before = evaluate("eval_before_finetune", "before finetuning") if plan.finetune_epochs and \
        cfg.eval.before_finetune else []
    tuned = fit("finetune", finetune_phase) if plan.finetune_epochs else None
    final = evaluate("eval", "after finetuning" if tuned else "final")
    if not files.is_global_zero:
        return None
    proto = backend.protocol(cfg.throughput.batch_size or plan.batch)
    if cfg.throughput.enabled:  # model compute on a fresh copy (weights do not change speed)
        speed = backend.throughput(create_model(**model_kwargs(cfg, plan.num_classes)), proto, plan.train_res,
                                   plan.test_res)
    else:
        speed = float("nan"), {r: float("nan") for r in plan.test_res}
    raise_if_stopped()  # nothing is written for a run that was stopped
    metrics = run_metrics(cfg, plan, model, trained, tuned, final, before, speed, proto, files.wall_time_s()).to_json()
    atomic_write_json(run_dir / METRICS, metrics)
    (run_dir / ERROR).unlink(missing_ok=True)  # a resumed run that completes is no longer failed
    return metrics


def run_metrics(cfg: DictConfig, plan: RunPlan, model, trained: dict, tuned: dict | None, final: list[dict],
                before: list[dict], speed: tuple, proto: dict, wall_time_s: float) -> RunMetrics:
    train_tput, infer_tput = speed

    def rows(evals):
        return [EvalRow(macs=forward_macs(model, r["resolution"]), infer_throughput=infer_tput[r["resolution"]], **r)
                for r in evals]

    m, device, ft = cfg.model, plan.device, bool(plan.finetune_epochs)
    return RunMetrics(
        status="complete", name=cfg.name, version=__version__,
        model=ModelInfo(m.size, m.group_size, m.expand_ratio, cfg.norm.name, f"g{m.group_size}_efficientnet_{m.size}",
                        m.group_rule),
        schedule=plan.schedule, finetuned=ft, dataset=cfg.data.name, num_classes=plan.num_classes,
        params=count_params(model), train_resolution=plan.train_res, native_resolution=plan.native_res,
        finetune_resolution=plan.finetune_res if ft else None, headline_resolution=plan.headline_res,
        train_macs=forward_macs(model, plan.train_res), train_throughput=train_tput,
        train_throughput_pipeline=trained["throughput_pipeline"], device=proto["device_name"],
        precision=device.precision, throughput_protocol=proto, global_batch_size=cfg.batch_size,
        per_device_batch_size=plan.batch, world_size=device.world_size, accumulate_grad_batches=device.accumulation,
        lr=plan.lr, finetune_lr=plan.finetune_lr if ft else None, eval=rows(final), eval_before_finetune=rows(before),
        epochs=trained["epochs"], finetune_epochs=tuned["epochs"] if tuned else 0, wall_time_s=round(wall_time_s, 1),
        seed=cfg.seed, config=OmegaConf.to_container(cfg, resolve=True),
    )


def load_data(cfg: DictConfig):
    """The data source, checked before training: a bad config, an empty class or a corrupt image is one clean
    ConfigError naming it."""
    if cfg.data.num_workers == "auto":  # the CPUs of this node, shared by its training processes
        cfg.data.num_workers = auto_workers(cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1)
    try:
        data = build_data(cfg.data)
        data.maybe_verify()  # data.verify_images: true / false / auto (every file if there are <= 20000)
        getattr(data, "splits", None)  # lists image folders now: an empty class folder fails here, not later
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    return data


def _mixup(cfg: DictConfig, plan: RunPlan):
    return build_mixup(cfg.augment, cfg.model.size, plan.num_classes, label_smoothing(cfg), regularization_scale(cfg))


DIAGNOSTICS_CSV = Path("diagnostics") / "power_epochs.csv"  # in the run dir: diagnostics.every_epoch's record


def _with_diagnostics(cfg: DictConfig, phase: Phase, files: "RunFiles") -> Phase:
    """diagnostics.every_epoch: the phase's fixed power-record batch, the first images of its validation set."""
    if cfg.diagnostics.every_epoch:
        n = min(cfg.diagnostics.batch_size, len(phase.val_set))
        phase.diag_images = torch.stack([phase.val_set[i][0] for i in range(n)])
        phase.diag_csv = files.run_dir / DIAGNOSTICS_CSV
    return phase


def train_phase(cfg: DictConfig, plan: RunPlan, data, files: "RunFiles") -> Phase:
    scheduler, ema = scaled_schedule(cfg.scheduler, cfg.ema, plan.time_scale)
    return _with_diagnostics(cfg, Phase(
        "train", cfg.epochs, plan.train_res, data.train_dataset(plan.train_res), data.val_dataset(plan.train_res),
        plan.batch, (data.mean, data.std), plan.num_classes,
        optimizer=OmegaConf.merge(cfg.optimizer, {"alpha": plan.rmsprop_alpha}), lr=plan.lr, scheduler=scheduler,
        mixup=_mixup(cfg, plan),
        ema=ema if cfg.ema.enabled else None, head_only=False, recalibrate_bn=False, dropout=True,
        ckpt_dir=files.ckpt_dir / "train", resume=files.resume_from("train"), on_epoch_end=files.save_wall_time),
        files)


def finetune_phase(cfg: DictConfig, plan: RunPlan, data, files: "RunFiles") -> Phase:
    f, res = cfg.finetune, plan.finetune_res
    recal = NORMS[cfg.norm.name].recalibrate_on_finetune if f.recalibrate_bn == "auto" else bool(f.recalibrate_bn)
    mixup = _mixup(cfg, plan) if f.mixup else None
    return _with_diagnostics(cfg, Phase(
        "finetune", f.epochs, res, data.train_dataset(res, eval_transform=f.eval_transform), data.val_dataset(res),
        plan.finetune_batch, (data.mean, data.std), plan.num_classes,
        optimizer=OmegaConf.merge(f.optimizer, {"alpha": plan.finetune_rmsprop_alpha}), lr=plan.finetune_lr,
        scheduler=f.scheduler, mixup=mixup, ema=None, head_only=f.layers == "head", recalibrate_bn=recal,
        dropout=f.dropout, ckpt_dir=files.ckpt_dir / "finetune", resume=files.resume_from("finetune"),
        on_epoch_end=files.save_wall_time), files)


class RunFiles:
    """What a run keeps under checkpoints/ for resuming: finished phases, the last checkpoint, the wall time."""

    def __init__(self, cfg: DictConfig, run_dir: Path, is_global_zero: bool):
        self.t0 = time.time()
        self.cfg, self.run_dir, self.is_global_zero = cfg, Path(run_dir), is_global_zero
        self.ckpt_dir = self.run_dir / "checkpoints"
        wall = self.ckpt_dir / WALL_TIME
        resumed = cfg.ckpt_path == "last" and wall.exists()
        self.earlier_wall_s = json.loads(wall.read_text())["wall_time_s"] if resumed else 0.0

    def wall_time_s(self) -> float:
        """Seconds spent on this run so far, over every segment of a resumed run."""
        return self.earlier_wall_s + time.time() - self.t0

    def save_wall_time(self):
        if self.is_global_zero and self.ckpt_dir.exists():
            atomic_write_json(self.ckpt_dir / WALL_TIME, {"wall_time_s": round(self.wall_time_s(), 1)})

    def resume_from(self, phase: str) -> str | None:
        ckpt = self.cfg.ckpt_path
        if ckpt == "last":
            last = self.ckpt_dir / phase / "last.ckpt"
            if not last.exists():
                return None
            self._check_readable(phase, last)
            return str(last)
        return ckpt if phase == "train" else None

    @staticmethod
    def _check_readable(phase: str, last: Path):
        """A damaged last.ckpt (a copy cut short, a full disk outside the atomic write) is named with what to do,
        before the phase starts, instead of torch's reader error from inside Lightning. mmap: the tensors are not
        read, only the archive's index and the pickled state."""
        try:
            torch.load(last, map_location="cpu", weights_only=False, mmap=True)  # the run's own file
        except Exception as err:  # noqa: BLE001  (any reader error means the same to the user)
            reason = str(err).strip().split(". ")[0] or type(err).__name__  # torch's advice that follows is generic
            raise ConfigError(f"ckpt_path=last: {last} cannot be read ({reason}). Delete it to restart the "
                              f"'{phase}' phase from its first epoch (finished phases are kept), or start the run "
                              "again with overwrite=true instead of ckpt_path=last (its files move to "
                              "previous-*/)") from None

    def finished(self, phase: str, model) -> dict | None:
        """A phase an earlier segment of this run finished: its weights loaded into `model`, its summary."""
        weights, info = self.ckpt_dir / f"{phase}.pt", self.ckpt_dir / f"{phase}.json"
        if self.cfg.ckpt_path == "last" and weights.exists() and info.exists():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            print(f"[g16net] resume: phase '{phase}' already finished, loaded {weights}")
            return json.loads(info.read_text())
        return None

    def finish(self, phase: str, model, summary: dict):
        if self.is_global_zero:
            atomic_write_torch(self.ckpt_dir / f"{phase}.pt", model.state_dict())
            atomic_write_json(self.ckpt_dir / f"{phase}.json", summary)
        self.save_wall_time()

    def check_checkpoint_fits(self, model):
        """`ckpt_path=PATH` from another model or config: say so, with the differing keys where the checkpoint's
        run dir still has its config, instead of a raw state_dict error after the data is loaded."""
        path = self.cfg.ckpt_path
        if path in (None, "last"):
            return
        # Checkpoints hold pickled loop state besides tensors; the user named this file as their own.
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if "state_dict" in saved:  # Lightning's: the LightningModule's keys
            have = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
        else:  # backend=ipu's
            have = saved.get("model", {})
        want = model.state_dict()
        bad = sorted(set(want) ^ set(have)) + sorted(k for k in want.keys() & have.keys()
                                                     if want[k].shape != have[k].shape)
        if not bad:
            return
        parents = Path(path).resolve().parents  # <run>/checkpoints/<phase>/last.ckpt
        config = parents[2] / ".hydra" / "config.yaml" if len(parents) > 2 else Path("/nonexistent")
        diff = config_differences(OmegaConf.load(config), self.cfg) if config.is_file() else []
        raise ConfigError(f"ckpt_path={path} was made with another model: {len(bad)} weights differ (e.g. "
                          f"{', '.join(bad[:3])}); "
                          + (f"its run's config ({config}) differs in: {'; '.join(diff[:8])}. " if diff else "")
                          + "Resume with the config it was trained with, or drop ckpt_path to start afresh")
