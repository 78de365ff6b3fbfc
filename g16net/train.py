"""`python -m g16net.train`: the main job (Hydra app; configs in conf/).

With no arguments: G16-B0, LN+PN, trained at half resolution on the built-in synthetic data, head finetuned at
native resolution, evaluated at several test resolutions; writes metrics.json and checkpoints in the run dir.
"""

import logging
import os
import shlex
import signal
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .core.conf_path import CONF_DIR
from .core.config import ConfigError
from .core.hydra_choices import bad_choices_exit_2
from .core.run_io import write_error
from .run.sweep_report import JobFailed

log = logging.getLogger("g16net")
# conf/hydra/launcher/submitit_slurm.yaml deliberately shadows the plugin's config of that name to set our
# defaults; Hydra 1.3 still validates it against the plugin's schema, and says so in a deprecation warning.
warnings.filterwarnings("ignore", message=".*is validated against ConfigStore schema with the same name")


def _single_job_argv_for_ddp_children(hc) -> None:
    """Lightning starts DDP ranks 1..N by re-running this command with `hydra.run.dir=<run.dir>` appended.
    In a sweep, the command is the whole sweep and run.dir is not this job's dir: give the children this job's
    own overrides and output dir, so each sweep job's ranks share one run dir."""
    if hc.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir


# What Lightning's DDP launcher leaves in os.environ; with LOCAL_RANK set it assumes that someone else started the
# ranks and launches none, so the next job of a sweep would wait on the previous job's (exited) ranks.
_DDP_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def _own_ddp_world(sweeping: bool):
    """In a sweep, each job starts its own DDP ranks and process group, then leaves the process as it found it."""
    if not sweeping:
        yield
        return
    saved = {k: os.environ.get(k) for k in _DDP_LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _resume_if_requeued(cfg: DictConfig) -> bool:
    """SLURM requeues a timed-out/preempted job with the same arguments: continue from its checkpoints (or start
    afresh when the first attempt wrote none)."""
    if cfg.ckpt_path is None and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        cfg.ckpt_path = "last"
        return True
    return False


def _last_checkpoint(run_dir: Path) -> str | None:
    """The newest `checkpoints/<phase>/last.ckpt`: the phase that was running wrote it last, and an earlier phase's
    stays beside it (a run stopped while finetuning has both)."""
    found = [(p.stat().st_mtime_ns, str(p)) for p in run_dir.glob("checkpoints/*/last.ckpt")]
    return max(found)[1] if found else None


def _resume_command(hc, run_dir: Path) -> str:
    keep = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") not in
            ("ckpt_path", "overwrite", "hydra.run.dir")]
    return shlex.join(["python", "-m", "g16net.train", *keep, f"hydra.run.dir={run_dir}", "ckpt_path=last"])


def _keep_out_of(run_dir: Path) -> None:
    """A refused command must not touch the run dir: detach Hydra's log file there (opened lazily, see
    conf/train.yaml) before anything is logged."""
    for logger in (logging.getLogger(), log):
        for h in list(logger.handlers):
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir.resolve():
                logger.removeHandler(h)
                h.close()


def _hydra_files(cfg: DictConfig, hc) -> dict:
    """What Hydra writes to .hydra/ (its own saving is off: it would overwrite a finished run's config before the
    app could refuse the command)."""
    return {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": OmegaConf.to_container(hc)}),
            "overrides.yaml": OmegaConf.create(list(hc.overrides.task))}


def main_job(cfg: DictConfig) -> float | JobFailed | None:
    """Run one job; in a sweep a failing job records error.json and returns a JobFailed, so the others go on and
    the sweep ends with a list of its failures (g16net/run/sweep_report.py). A stopped job (SIGTERM, SIGINT) records
    why and ends the whole process with 128 + the signal number."""
    from .core.run_safety import RunDirRefused, RunStopped, launch_rank, remove_new_run_dir, stop_on_signals
    from .run.runner import run  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    _single_job_argv_for_ddp_children(hc)
    requeued = _resume_if_requeued(cfg)
    state: dict = {}
    owner = launch_rank() == 0

    def record(message: str, **kw):
        if state.get("claimed") and owner:
            if state.get("files") is not None:
                state["files"].save_wall_time()
            write_error(run_dir, message, _last_checkpoint(run_dir), **kw)

    def managed_stop(signum):  # submitit will requeue the job; it resumes from its checkpoints
        record(f"stopped by {signal_name(signum)}; the job manager requeues it", status="stopped")

    try:
        with stop_on_signals(managed_stop), _own_ddp_world(sweeping):
            metrics = run(cfg, run_dir, requeued=requeued, hydra_files=_hydra_files(cfg, hc), state=state)
    except RunStopped as e:
        record(f"stopped by {e.name} before it finished", status="stopped", signal=e.name)
        last = _last_checkpoint(run_dir)
        log.error("run stopped by %s%s; resume it with:\n  %s", e.name,
                  f" (last checkpoint: {last})" if last else " before its first checkpoint",
                  _resume_command(hc, run_dir))
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001  (recorded, then re-raised or skipped)
        message = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        last = _last_checkpoint(run_dir)
        if isinstance(e, RunDirRefused) or not state.get("claimed"):
            _keep_out_of(run_dir)
            if owner:
                remove_new_run_dir(run_dir)
        else:
            record(message)
        log.error("run failed: %s%s", message, f" (last good checkpoint: {last})" if last and state.get("claimed")
                  and last not in message
                  else (" (no checkpoint was written yet)" if state.get("claimed") else ""))
        if isinstance(e, ConfigError):
            if not sweeping:
                sys.exit(2)
            return JobFailed(str(run_dir), message)
        if sweeping:
            log.error("%s", traceback.format_exc())
            return JobFailed(str(run_dir), message)
        raise
    if metrics is None:  # not global rank zero
        return None
    head = next(r for r in metrics["eval"] if r["resolution"] == metrics["headline_resolution"])
    log.info("metrics.json written to %s (headline: %d px, top-1 %.2f%%, %.0f s)", run_dir,
             metrics["headline_resolution"], head["top1"], metrics["wall_time_s"])
    return head["top1"]


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | JobFailed | None:
    return main_job(cfg)


def main() -> float | JobFailed | None:
    with bad_choices_exit_2():
        return _hydra_main()


if __name__ == "__main__":
    main()
