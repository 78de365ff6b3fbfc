"""What keeps a run dir trustworthy: who may write into it, what a rerun may change, and how a stopped run ends.

- A command that is refused (results already there, nothing to resume, a resume with another config) changes
  nothing in the directory: these checks run before anything is written, `.hydra/` included.
- `overwrite=true` moves every result of the old run into `previous-*/`.
- SIGTERM / SIGINT end a run with error.json saying so and a non-zero exit (128 + signal), never as a success.
"""

import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .run_io import ERROR, METRICS, atomic_write_text

RESULTS = (METRICS, ERROR, "checkpoints", "logs", ".hydra", "wandb")  # plus the job's *.log files
# Keys a resume may change: where the data lives and how it is read, not what is trained.
RESUME_MAY_CHANGE = ("ckpt_path", "overwrite", "data.root", "data.num_workers", "data.download",
                     "data.verify_images", "trainer.progress_bar", "logger", "throughput")


class NoteNewRunDir(Callback):
    """Hydra makes the run dir (and its missing parents) before the app can check the command: note which of them
    do not exist yet, so that a refused command (a mistyped `hydra.run.dir` with `ckpt_path=last`, say) can remove
    them again with `remove_new_run_dir` and leave no empty directory behind. A hydra.callbacks entry of
    conf/train.yaml; sweeps' job dirs are left as they are."""

    made: tuple[Path, ...] = ()  # read by the app, in the process that runs the job

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        NoteNewRunDir.made = tuple(p for p in (run_dir, *run_dir.parents) if not p.exists())


def remove_new_run_dir(run_dir: Path) -> None:
    """Remove `run_dir` and the parents Hydra made for it, while they are empty (nothing of anyone's is lost)."""
    made = NoteNewRunDir.made
    if not made or made[0] != Path(run_dir).absolute():
        return
    for d in made:
        try:
            d.rmdir()  # only an empty directory; stops at the first that holds anything
        except OSError:
            return


class RunDirRefused(ConfigError):
    """The run dir cannot take this command; raised before anything in it is changed."""


class RunStopped(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT. A BaseException, so that no `except Exception` swallows it;
    Lightning tears its loops down and re-raises it (its own SIGTERM path exits with status 0)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def launch_rank() -> int:
    """This process's rank as its launcher set it (torchrun, srun, Lightning's DDP children); 0 when alone."""
    return max(int(os.environ.get(k, "0") or 0) for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


_PENDING: list[int] = []  # signals whose RunStopped may have been swallowed


def raise_if_stopped() -> None:
    """A signal that lands while Python runs a finalizer (an object's __del__ called by the garbage collector)
    has its RunStopped printed and ignored there, so the run would go on; the run's safe points (every training
    batch, between phases, before results are written) raise it again here."""
    if _PENDING:
        raise RunStopped(_PENDING[0])


@contextmanager
def stop_on_signals(on_managed_stop=None):
    """SIGTERM and SIGINT raise RunStopped. Where a job manager already handles SIGTERM (submitit: it requeues
    the SLURM job on pre-emption), its handler keeps the final say and `on_managed_stop(signum)` only records it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in sigs}

    def handler(signum, frame):
        prev = previous.get(signum)
        if signum == signal.SIGTERM and callable(prev):
            if on_managed_stop is not None:
                on_managed_stop(signum)
            prev(signum, frame)
            return
        _PENDING.append(signum)
        raise RunStopped(signum)

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield
        raise_if_stopped()
    finally:
        _PENDING.clear()
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    try:
        walk(OmegaConf.to_container(cfg, resolve=True), "")
    except Exception:  # noqa: BLE001  (an old config with interpolations that no longer resolve)
        walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def config_differences(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """'key: run=X, now=Y' for the keys both configs have and a resume may not change."""
    old, new = _flat(saved), _flat(cfg)
    return [f"{k}: run has {old[k]!r}, this command {new[k]!r}" for k in sorted(old.keys() & new.keys())
            if old[k] != new[k] and not any(k == p or k.startswith(p + ".") for p in RESUME_MAY_CHANGE)]


def _existing_results(run_dir: Path) -> list[Path]:
    return [run_dir / n for n in RESULTS if (run_dir / n).exists()] + sorted(run_dir.glob("*.log"))


def _move_aside(run_dir: Path) -> Path:
    backup = run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        if not backup.exists():
            break
        backup = run_dir / f"{time.strftime('previous-%Y%m%d-%H%M%S')}-{i}"
    backup.mkdir()
    for p in _existing_results(run_dir):
        p.rename(backup / p.name)
    return backup


def claim_run_dir(run_dir: Path, cfg: DictConfig, requeued: bool = False, hydra_files: dict | None = None):
    """Make `run_dir` this run's, or refuse with the dir untouched. Only rank 0 decides and writes; other ranks
    join the dir rank 0 prepared."""
    if launch_rank() != 0:
        return
    run_dir = Path(run_dir)
    finished = [p.name for p in (run_dir / METRICS, run_dir / "checkpoints") if p.exists()]
    saved = run_dir / ".hydra" / "config.yaml"
    resuming = cfg.ckpt_path == "last" and (run_dir / "checkpoints").exists()
    if cfg.ckpt_path == "last" and not resuming and not requeued:
        raise RunDirRefused(f"ckpt_path=last but {run_dir} holds no checkpoints/ to resume; check hydra.run.dir "
                            "(it must be the interrupted run's directory), or drop ckpt_path=last to start afresh")
    if resuming and saved.exists():
        diff = config_differences(OmegaConf.load(saved), cfg)
        if diff:
            raise RunDirRefused(f"ckpt_path=last: this run was made with another config ({saved}); differing "
                                f"keys: {'; '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}. Resume with the "
                                "run's own overrides (.hydra/overrides.yaml), or start a new run elsewhere")
    if finished and cfg.ckpt_path != "last":
        if not cfg.overwrite:
            raise RunDirRefused(f"{run_dir} already holds {', '.join(finished)}; pass ckpt_path=last to resume "
                                "it, overwrite=true to start again (old files are moved to previous-*/), or use "
                                "another hydra.run.dir")
        print(f"[g16net] overwrite=true: the old run's files moved to {_move_aside(run_dir)}", flush=True)
    if hydra_files and not (resuming and saved.exists()):  # a resume keeps the config the run was made with
        for name, obj in hydra_files.items():
            atomic_write_text(run_dir / ".hydra" / name, OmegaConf.to_yaml(obj))

