"""Collect finished runs' metrics.json into a results CSV (one row per run and test resolution) plus seed means.

    python -m g16net.collect outputs/ multirun/2026-11-22/12-00-00 --out results.csv

writes ``results.csv`` (per run; ``seed`` and ``config_id`` columns) and ``results_mean.csv`` next to it: one row
per configuration, device and test resolution with ``n``, ``seeds`` and ``<col>_mean``/``<col>_std`` for top-1/5 and
throughputs. A configuration is the run's resolved config without ``seed`` and run-location keys
(``CONFIG_ID_IGNORES``), so runs that differ in anything else stay apart. std is the sample std (ddof=1), blank
for n=1. A run directory is any directory holding ``metrics.json`` or ``.hydra/config.yaml``. Failed, unfinished
or malformed runs are listed on stderr and skipped; they never stop the collection.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from dataclasses import fields, is_dataclass
from numbers import Real
from pathlib import Path
from typing import get_args, get_origin

from ..core.metrics import EvalRow, ModelInfo, RunMetrics, required
from ..core.run_io import atomic_open
from .results import (
    ALL_COLUMNS,
    MEAN_COLUMNS,
    aggregate,
    assign_series,
    format_value,
    mean_table_row,
)

RUN_FIELDS, MODEL_FIELDS, EVAL_FIELDS = ({f.name for f in fields(r)} for r in (RunMetrics, ModelInfo, EvalRow))
# Top-level config keys that say where or how a run was launched, not what was trained: runs differing only in
# these (and in seed) are seeds of one configuration. `hydra` is absent from a job's config; listed for safety.
CONFIG_ID_IGNORES = ("seed", "name", "hydra", "ckpt_path", "overwrite")


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself included), naturally sorted.

    Hidden dirs (.hydra, .git) are not searched and a run dir is a leaf: its checkpoints/logs are
    not searched for nested runs. A sweep root (multirun.yaml only) is not a run.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "metrics.json" in filenames or (here / ".hydra" / "config.yaml").is_file():
            found.append(here)
            dirnames[:] = []
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    # multirun/.../10 must sort after .../9
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _error_reason(run_dir: Path) -> str:
    err_path = run_dir / "error.json"
    if not err_path.is_file():
        return "unfinished: no metrics.json"
    try:
        err = json.loads(err_path.read_text())
        reason = f"{err.get('status', 'failed')}: {err.get('error', '(error.json has no message)')}"
        # Tells the user the run can be resumed (ckpt_path=last) rather than rerun from scratch.
        return reason + (f" (last checkpoint: {err['last_checkpoint']})" if err.get("last_checkpoint") else "")
    except (json.JSONDecodeError, AttributeError, OSError) as e:
        return f"failed: error.json present but unreadable ({e})"


def _problems(m: dict) -> str | None:
    """Why metrics ``m`` cannot give rows, or None if it is usable. What is required and what must be a number
    come from the record (``g16net.core.metrics.RunMetrics``)."""
    if "status" in m and m["status"] != "complete":
        return f"status is {m['status']!r}, not 'complete'"
    missing, bad = [], []
    _check(m, RunMetrics, "", missing, bad)
    reasons = []
    if missing:
        reasons.append("missing required fields: " + ", ".join(missing))
    if bad:
        reasons.append("bad values (wrong type) for: " + ", ".join(bad))
    if not reasons and not m["eval"]:
        reasons.append("empty eval list")
    return "; ".join(reasons) or None


def _check(obj: dict, record, prefix: str, missing: list, bad: list) -> None:
    """The required fields of dataclass ``record`` in ``obj``: this level's first, then the nested records."""
    nested = []
    for f in required(record):
        key = prefix + f.name
        if f.name not in obj:
            missing.append(key)
        elif is_dataclass(f.type):
            nested.append((key, [obj[f.name]], f.type, False))
        elif get_origin(f.type) is list:
            nested.append((key, obj[f.name], get_args(f.type)[0], True))
        elif not _ok(f.type, obj[f.name]):
            bad.append(key)
    for key, items, item_type, many in nested:
        if not isinstance(items, list):
            bad.append(key)
            continue
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if many else key
            if isinstance(item, dict):
                _check(item, item_type, where + ".", missing, bad)
            else:
                bad.append(where)


def _ok(kind: type, value) -> bool:
    if kind in (int, float):
        return isinstance(value, Real) and not isinstance(value, bool)
    return isinstance(value, str) and value != ""


def config_id(config: dict) -> str:
    """Short stable hash of the resolved config minus CONFIG_ID_IGNORES (sorted-key JSON, so order-free)."""
    kept = {k: v for k, v in config.items() if k not in CONFIG_ID_IGNORES}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def rows_for_run(run_dir: Path) -> tuple[list[dict], str | None]:
    """(rows, None) for a usable run, else ([], reason)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return [], _error_reason(run_dir)
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [], f"metrics.json does not parse (half-written or corrupt?): {e}"
    except (OSError, UnicodeDecodeError) as e:
        return [], f"metrics.json unreadable: {e}"
    if not isinstance(m, dict):
        return [], f"metrics.json is a JSON {type(m).__name__}, expected an object"
    problem = _problems(m)
    if problem:
        return [], problem

    model, headline_res = m["model"], m.get("headline_resolution")
    before = {e.get("resolution"): e for e in m.get("eval_before_finetune") or [] if isinstance(e, dict)}
    config = m.get("config") if isinstance(m.get("config"), dict) else None  # absent in runs before schema 1
    # Columns named as a field of the record are copied from it: run-level, model, then per test resolution.
    run = {c: m.get(c) for c in ALL_COLUMNS if c in RUN_FIELDS}
    run.update({c: model.get(c) for c in ALL_COLUMNS if c in MODEL_FIELDS and c != "name"})
    run.update(run_dir=str(run_dir), series=None, model_name=model.get("name"),
               throughput_batch_size=(m.get("throughput_protocol") or {}).get("batch_size"),
               seed=m.get("seed", config.get("seed") if config else None),
               config_id=config_id(config) if config else None)
    rows = []
    for e in m["eval"]:
        pre = before.get(e["resolution"], {})
        rows.append({**run, **{c: e.get(c) for c in ALL_COLUMNS if c in EVAL_FIELDS},
                     "test_resolution": e["resolution"], "test_macs": e["macs"],
                     "headline": None if headline_res is None else e["resolution"] == headline_res,
                     "top1_before_finetune": pre.get("top1"), "top5_before_finetune": pre.get("top5")})
    # A run with throughput.enabled=false records NaN: not measured, like a missing value (means skip it).
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows], None


def collect(paths) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows from every run found under ``paths`` plus (run_dir, reason) for each skipped run."""
    rows, skipped, seen = [], [], set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"path does not exist: {p}")
        for run_dir in find_run_dirs(p):
            if run_dir.resolve() in seen:  # overlapping arguments, e.g. multirun/ and multirun/x/0
                continue
            seen.add(run_dir.resolve())
            run_rows, reason = rows_for_run(run_dir)
            if reason:
                skipped.append((str(run_dir), reason))
            rows.extend(run_rows)
    assign_series(rows)
    return rows, skipped


def write_csv(rows: list[dict], out, columns=ALL_COLUMNS) -> Path:
    """Written atomically, so ``out`` is never half-written."""
    with atomic_open(out, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([format_value(r.get(c)) for c in columns])
    return Path(out)


def mean_path(out) -> Path:
    """Where the seed-aggregated table goes: results.csv -> results_mean.csv, same folder."""
    out = Path(out)
    return out.with_name(f"{out.stem}_mean{out.suffix}")


def write_tables(rows: list[dict], out) -> tuple[Path, Path, list[dict]]:
    """The per-run CSV at ``out`` and the seed means next to it; returns both paths and the aggregated rows."""
    agg = aggregate(rows)
    write_csv(rows, out)
    means = write_csv([mean_table_row(a) for a in agg], mean_path(out), MEAN_COLUMNS)
    return Path(out), means, agg


def format_skipped(skipped: list[tuple[str, str]]) -> str:
    width = max(len("run dir"), *(len(d) for d, _ in skipped))
    lines = [f"{'run dir':<{width}}  reason", f"{'-' * width}  ------"]
    lines += [f"{d:<{width}}  {r}" for d, r in skipped]
    return "\n".join(lines)
