"""Experiment loggers: CSV by default; W&B offline-first (no account needed, `wandb sync` later)."""

import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger


def make_logger(cfg: DictConfig, run_dir: Path, phase: str) -> Logger | bool:
    """One logger per phase: each phase restarts its step count, so each gets its own CSV file / W&B run,
    grouped under the job's name."""
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="logs", version=phase)
    from pytorch_lightning.loggers import WandbLogger

    lg = cfg.logger
    return WandbLogger(project=lg.project, entity=lg.entity, name=f"{cfg.name}/{phase}", group=lg.group or cfg.name,
                       job_type=phase, tags=list(lg.tags), save_dir=str(run_dir), offline=lg.mode == "offline",
                       config=OmegaConf.to_container(cfg, resolve=True))


@contextmanager
def phase_logger(cfg: DictConfig, run_dir: Path, phase: str):
    """The phase's logger, and its W&B run closed afterwards whatever happens, so the next phase or sweep job
    never writes into it."""
    try:
        yield make_logger(cfg, run_dir, phase)
    finally:
        finish_wandb()


def finish_wandb():
    wandb = sys.modules.get("wandb")  # only if something imported it: no import cost for CSV runs
    if wandb is not None and wandb.run is not None:
        wandb.finish()
