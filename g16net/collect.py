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

import argparse
import csv
import hashlib
import json
import os
import re
import sys
from numbers import Real
from pathlib import Path

from g16net.results import (
    ALL_COLUMNS,
    MEAN_COLUMNS,
    STD_NOTE,
    aggregate,
    assign_series,
    duplicate_seeds,
    format_value,
    mean_table_row,
)
from g16net.run_io import atomic_open

REQUIRED_TOP = ["status", "model", "schedule", "params", "train_resolution", "train_macs",
                "train_throughput", "eval"]
REQUIRED_MODEL = ["size", "group_size", "expand_ratio", "norm"]
REQUIRED_EVAL = ["resolution", "top1", "macs", "infer_throughput"]
# Required fields that must be numbers (anything else would silently break sorting/plotting later).
NUMERIC = {"params", "train_resolution", "train_macs", "train_throughput", "model.group_size",
           "model.expand_ratio", "resolution", "top1", "macs", "infer_throughput"}
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
    """Why metrics ``m`` cannot give rows, or None if it is usable."""
    if "status" in m and m["status"] != "complete":
        return f"status is {m['status']!r}, not 'complete'"
    missing = [k for k in REQUIRED_TOP if k not in m]
    bad = []
    model = m.get("model")
    if isinstance(model, dict):
        missing += [f"model.{k}" for k in REQUIRED_MODEL if k not in model]
        bad += [f"model.{k}" for k in REQUIRED_MODEL if k in model and not _ok(f"model.{k}", model[k])]
    elif model is not None:
        bad.append("model")
    bad += [k for k in REQUIRED_TOP if k in m and k not in ("model", "eval") and not _ok(k, m[k])]
    evals = m.get("eval")
    if isinstance(evals, list):
        for i, e in enumerate(evals):
            if not isinstance(e, dict):
                bad.append(f"eval[{i}]")
                continue
            missing += [f"eval[{i}].{k}" for k in REQUIRED_EVAL if k not in e]
            bad += [f"eval[{i}].{k}" for k in REQUIRED_EVAL if k in e and not _ok(k, e[k])]
    elif evals is not None:
        bad.append("eval")
    reasons = []
    if missing:
        reasons.append("missing required fields: " + ", ".join(missing))
    if bad:
        reasons.append("bad values (wrong type) for: " + ", ".join(bad))
    if not reasons and not evals:
        reasons.append("empty eval list")
    return "; ".join(reasons) or None


def _ok(key: str, value) -> bool:
    if key in NUMERIC:
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

    model = m["model"]
    headline_res = m.get("headline_resolution")
    before = {e.get("resolution"): e for e in m.get("eval_before_finetune") or [] if isinstance(e, dict)}
    protocol = m.get("throughput_protocol") or {}
    config = m.get("config") if isinstance(m.get("config"), dict) else None  # absent in runs before schema 1
    seed = m.get("seed", config.get("seed") if config else None)
    cid = config_id(config) if config else None
    rows = []
    for e in m["eval"]:
        pre = before.get(e["resolution"], {})
        rows.append({
            "run_dir": str(run_dir), "series": None, "size": model["size"],
            "group_size": model["group_size"], "expand_ratio": model["expand_ratio"], "norm": model["norm"],
            "schedule": m["schedule"], "finetuned": m.get("finetuned"), "dataset": m.get("dataset"),
            "train_resolution": m["train_resolution"], "test_resolution": e["resolution"],
            "native_resolution": m.get("native_resolution"),
            "headline": None if headline_res is None else e["resolution"] == headline_res,
            "top1": e["top1"], "top5": e.get("top5"), "params": m["params"], "train_macs": m["train_macs"],
            "test_macs": e["macs"], "train_throughput": m["train_throughput"],
            "train_throughput_pipeline": m.get("train_throughput_pipeline"),
            "infer_throughput": e["infer_throughput"], "device": m.get("device"),
            "precision": m.get("precision"), "epochs": m.get("epochs"),
            "finetune_epochs": m.get("finetune_epochs"), "wall_time_s": m.get("wall_time_s"),
            "name": m.get("name"), "model_name": model.get("name"), "num_classes": m.get("num_classes"),
            "loss": e.get("loss"), "top1_before_finetune": pre.get("top1"),
            "top5_before_finetune": pre.get("top5"), "throughput_batch_size": protocol.get("batch_size"),
            "finetune_resolution": m.get("finetune_resolution"), "version": m.get("version"),
            "schema": m.get("schema"), "infer_throughput_pipeline": e.get("infer_throughput_pipeline"),
            "seed": seed, "config_id": cid,
        })
    return rows, None


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m g16net.collect", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs or any folder containing them")
    parser.add_argument("--out", required=True, help="per-run CSV to write (replaced atomically); the seed "
                        "means go next to it as <stem>_mean.csv")
    args = parser.parse_args(argv)
    if not str(args.out).endswith(".csv"):  # the means file is named after it
        parser.error(f"--out must name a .csv file, got {args.out!r}")
    try:
        rows, skipped = collect(args.paths)
    except FileNotFoundError as e:
        parser.error(str(e))  # exits 2
    if skipped:
        print(f"skipped {len(skipped)} run(s):\n{format_skipped(skipped)}", file=sys.stderr)
    if not rows:
        print(f"error: no complete runs found under {', '.join(args.paths)}; {args.out} not written",
              file=sys.stderr)
        return 1
    _, means, agg = write_tables(rows, args.out)
    for cid, seed, dirs in duplicate_seeds(agg):
        print(f"warning: config {cid} has seed {seed} in {len(dirs)} runs (repeats, not independent seeds): "
              f"{', '.join(dirs)}", file=sys.stderr)
    n_runs = len({r["run_dir"] for r in rows})
    n_configs = len({(a["config_id"] or a["run_dir"], a["device"]) for a in agg})
    print(f"wrote {len(rows)} rows from {n_runs} run(s) to {args.out}\n"
          f"wrote {len(agg)} rows for {n_configs} configuration(s) to {means} ({STD_NOTE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
