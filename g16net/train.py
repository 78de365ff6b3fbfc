"""`python -m g16net.train`: the main job (Hydra app; configs in conf/).

With no arguments: G16-B0, LN+PN, trained at half resolution on the built-in synthetic data, head finetuned at
native resolution, evaluated at several test resolutions; writes metrics.json and checkpoints in the run dir.
"""

import logging
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from .config import ConfigError
from .run_io import write_error

log = logging.getLogger("g16net")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
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


def _resume_if_requeued(cfg: DictConfig) -> None:
    """SLURM requeues a timed-out/preempted job with the same arguments: continue from its checkpoints."""
    if cfg.ckpt_path is None and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        cfg.ckpt_path = "last"


def main_job(cfg: DictConfig) -> float | None:
    """Run one job; in a sweep a failing job records error.json and lets the others go on."""
    from .runner import run  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    _single_job_argv_for_ddp_children(hc)
    _resume_if_requeued(cfg)
    try:
        with _own_ddp_world(sweeping):
            metrics = run(cfg, run_dir)
    except Exception as e:  # noqa: BLE001  (recorded, then re-raised or skipped)
        message = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        last = next((str(p) for p in sorted(run_dir.glob("checkpoints/*/last.ckpt"))), None)
        write_error(run_dir, message, last)
        log.error("run failed: %s%s", message, f" (last good checkpoint: {last})" if last else "")
        if isinstance(e, ConfigError):
            if not sweeping:
                sys.exit(2)
            return None
        if sweeping:
            log.error("%s", traceback.format_exc())
            return None
        raise
    if metrics is None:  # not global rank zero
        return None
    head = next(r for r in metrics["eval"] if r["resolution"] == metrics["headline_resolution"])
    log.info("metrics.json written to %s", run_dir)
    for r in metrics["eval"]:
        log.info("  test %4d px: top-1 %.2f%%", r["resolution"], r["top1"])
    return head["top1"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return main_job(cfg)


if __name__ == "__main__":
    main()
