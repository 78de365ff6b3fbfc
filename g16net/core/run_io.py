"""Files a run writes: written whole or not at all, so a killed run never leaves a half-written result."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

METRICS, ERROR = "metrics.json", "error.json"


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw):
    """A file opened on a temporary name in the same directory; on success fsync'd and renamed over `path`
    (atomic on POSIX), on failure removed, so `path` always holds the old or the new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; results must be as readable as any other file the user writes (shared clusters)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_torch(path: str | os.PathLike, obj) -> Path:
    import torch  # only the runs write tensors; the result tools stay light

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def write_error(run_dir: Path, message: str, last_checkpoint: str | None = None, status: str = "failed",
                **extra) -> Path:
    """error.json: why a run stopped (status failed, or stopped by a signal), read by `g16net.collect` to list
    the run as not complete."""
    return atomic_write_json(run_dir / ERROR, {"status": status, "error": message,
                                              "last_checkpoint": last_checkpoint, **extra})
