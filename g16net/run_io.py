"""Files a run writes: written whole or not at all, so a killed run never leaves a half-written result."""

import json
import os
import tempfile
from pathlib import Path

METRICS, ERROR = "metrics.json", "error.json"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_error(run_dir: Path, message: str, last_checkpoint: str | None = None) -> Path:
    """error.json: why a run stopped, read by `g16net.collect` to list the run as failed."""
    return atomic_write_json(run_dir / ERROR, {"status": "failed", "error": message,
                                              "last_checkpoint": last_checkpoint})


def read_metrics(run_dir: Path) -> dict | None:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return None
    return json.loads(path.read_text())
