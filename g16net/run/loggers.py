"""Experiment loggers: CSV by default; W&B offline-first (no account needed, `wandb sync` later)."""

import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed phase appends to it instead, so the
    file keeps every segment's rows (the step column continues, as Lightning restores the global step)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = header.split(",") if header else []


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def make_logger(cfg: DictConfig, run_dir: Path, phase: str) -> Logger | bool:
    """One logger per phase: each phase restarts its step count, so each gets its own CSV file / W&B run,
    grouped under the job's name."""
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        return AppendingCSVLogger(save_dir=str(run_dir), name="logs", version=phase)
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
