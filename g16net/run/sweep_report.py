"""How a sweep ends: every job runs, then one line per failed job (its directory and why) and a non-zero exit status.

A failing sweep job returns a `JobFailed` instead of raising, because Hydra's sweeper would stop at the first
failed job's batch (later batches would never run) and end without saying which other jobs failed. The Hydra
callback `ReportFailedJobs` (conf/train.yaml, `hydra.callbacks`) sees each job's return where the job ran: in the
launching process with the local launcher, on a cluster node under submitit. So each failure is recorded as a file
in the sweep directory, which the launching process reads once the launcher has returned every job.
"""

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ..core.run_io import atomic_write_json

RECORDS = ".failed_jobs"  # under the sweep dir; hidden, so `g16net.collect` never takes it for a run
EXIT_STATUS = 1


@dataclass(frozen=True)
class JobFailed:
    """The return value of a sweep job that failed: its directory and the message error.json holds (or would
    hold, where the job was refused before its directory became its own)."""
    job_dir: str
    error: str


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _failure(job_return: JobReturn, job_dir: str) -> JobFailed | None:
    if job_return.status == JobStatus.FAILED:  # raised past main_job; the public getter would re-raise it
        e = job_return._return_value
        return JobFailed(job_dir, f"{type(e).__name__}: {e}")
    value = job_return._return_value
    return value if isinstance(value, JobFailed) else None


class ReportFailedJobs(Callback):
    """Does nothing outside sweeps: a single run already reports its own error and exit status."""

    @staticmethod
    def _records(config: DictConfig) -> Path:
        return Path(str(config.hydra.sweep.dir)) / RECORDS

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        shutil.rmtree(self._records(config), ignore_errors=True)  # a sweep re-run into its own dir reports itself only

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        failed = _failure(job_return, str(config.hydra.runtime.output_dir))
        if failed is not None:
            atomic_write_json(self._records(config) / f"{config.hydra.job.num}.json",
                              {"job_num": config.hydra.job.num, "job_dir": failed.job_dir,
                               "error": _one_line(failed.error), "overrides": list(job_return.overrides or [])})

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = sorted((json.loads(p.read_text()) for p in self._records(config).glob("*.json")),
                        key=lambda r: r["job_num"])
        if not failed:
            return
        lines = [f"[g16net] sweep finished with {len(failed)} failed job(s) (every job ran):"]
        lines += [f"[g16net]   FAILED {r['job_dir']}: {r['error']}" for r in failed]
        print("\n".join(lines), file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS)
