"""Shared helpers for results tables: column schema, series labels, CSV loading, seed aggregation, Pareto fronts.

Used by ``g16net.collect`` (writes results.csv and results_mean.csv) and ``g16net.figs`` (plots them). Column types
come from the metrics record (``g16net.core.metrics``), norm labels from the norm registry.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.metrics import EvalRow, ModelInfo, RunMetrics, field_types
from ..models import NORMS

# Order matters: this is the CSV header written by collect (extras follow).
COLUMNS = [
    "run_dir", "series", "size", "group_size", "expand_ratio", "norm", "schedule", "finetuned", "dataset",
    "train_resolution", "test_resolution", "native_resolution", "headline", "top1", "top5", "params",
    "train_macs", "test_macs", "train_throughput", "train_throughput_pipeline", "infer_throughput",
    "device", "precision", "epochs", "finetune_epochs", "wall_time_s",
]
EXTRA_COLUMNS = [
    "name", "model_name", "num_classes", "loss", "top1_before_finetune", "top5_before_finetune",
    "throughput_batch_size", "finetune_resolution", "version", "schema", "infer_throughput_pipeline",
    "seed", "config_id",
]
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS

# Cell types: a column copied from the metrics record has its field's type; the rest are the table's own.
_TYPES = {**field_types(RunMetrics, EvalRow, ModelInfo), "test_resolution": int, "test_macs": float,
          "top1_before_finetune": float, "top5_before_finetune": float, "throughput_batch_size": int, "headline": bool}
INT_COLUMNS = {c for c in ALL_COLUMNS if _TYPES.get(c) is int}
FLOAT_COLUMNS = {c for c in ALL_COLUMNS if _TYPES.get(c) is float}
BOOL_COLUMNS = {c for c in ALL_COLUMNS if _TYPES.get(c) is bool}

# Seed aggregation. MACs follow from the config; every other float is measured and varies between seeds.
MEASURED_COLUMNS = [c for c in ALL_COLUMNS if c in FLOAT_COLUMNS and c not in ("train_macs", "test_macs")]
# Identify one run, not its configuration: left out of the aggregated table.
PER_RUN_COLUMNS = ("run_dir", "seed")
# Runs with the same config_id on the same device at the same test resolution are seeds of one configuration
# (throughput means across different hardware would mean nothing). Old CSVs without config_id: one run each.
DESCRIPTIVE_COLUMNS = [c for c in ALL_COLUMNS if c not in MEASURED_COLUMNS and c not in PER_RUN_COLUMNS]
MEAN_COLUMNS = (["config_id", "n", "seeds"] + [c for c in DESCRIPTIVE_COLUMNS if c != "config_id"]
                + [f"{c}_{stat}" for c in MEASURED_COLUMNS for stat in ("mean", "std")])
STD_NOTE = "std = sample std (ddof=1) over seeds; blank when n=1"

NORM_LABELS = {name: spec.label for name, spec in NORMS.items()}  # the norm registry's, in its order
SCHEDULE_LABELS = {"half": "Half", "native": "Native"}

PAPER_POINTS_CSV = Path(__file__).resolve().parents[1] / "reference" / "paper_points.csv"


def norm_label(norm: str) -> str:
    return NORM_LABELS.get(norm, norm.upper())


def series_label(group_size, norm: str, schedule: str, baseline: bool = False) -> str:
    """Paper-style label, e.g. ``G16-LN+PN-Half``; ``baseline`` marks runs that were not finetuned."""
    sched = SCHEDULE_LABELS.get(schedule, str(schedule).capitalize())
    base = f"G{group_size}-{norm_label(norm)}"
    if not baseline:
        return f"{base}-{sched}"
    # The paper calls the un-finetuned native-resolution runs "Baseline" (G1-GN-Baseline).
    return f"{base}-Baseline" if schedule == "native" else f"{base}-{sched}-NoFT"


def assign_series(rows: list[dict]) -> None:
    """Fill ``row["series"]`` in place: one series per (group_size, norm, schedule, finetuned or not).

    Not finetuned is always its own series (native: the paper's G1-GN-Baseline), whatever else was collected,
    so a run keeps its label and colour between tables. Unknown finetuning (None) counts as finetuned.
    """
    for r in rows:
        r["series"] = series_label(r["group_size"], r["norm"], r["schedule"], baseline=r.get("finetuned") is False)


def _parse(col: str, text: str):
    if text == "":
        return None
    if col in INT_COLUMNS:
        return int(float(text))
    if col in FLOAT_COLUMNS:
        return float(text)
    if col in BOOL_COLUMNS:
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {text!r}")
        return low in ("true", "1")
    return text


def format_value(value) -> str:
    """CSV cell text: blank for None, lower-case booleans, repr-free floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_results(csv_path: str | Path) -> list[dict]:
    """Read a collect-produced CSV back into typed dicts (blank cells -> None)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"results CSV not found: {csv_path}")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing and "top1_mean" in (reader.fieldnames or []):
            raise ValueError(f"{csv_path} is the seed-aggregated table; pass the per-run results CSV next to it "
                             "(figures aggregate it themselves and also draw every seed)")
        if missing:
            raise ValueError(f"{csv_path}: missing columns {', '.join(missing)} "
                             "(was it written by g16net.collect?)")
        rows = []
        for lineno, raw in enumerate(reader, start=2):
            try:
                rows.append({k: _parse(k, v or "") for k, v in raw.items() if k is not None})
            except ValueError as e:
                raise ValueError(f"{csv_path}:{lineno}: {e}") from None
    return rows


def load_paper_points(path: str | Path = PAPER_POINTS_CSV) -> list[dict]:
    """The paper's headline-figure points; '#' lines are comments, empty throughput -> None."""
    path = Path(path)
    with path.open(newline="") as f:
        lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    points = []
    for raw in csv.DictReader(lines):
        points.append({
            "series": raw["series"], "size": raw["size"], "group_size": int(raw["group_size"]),
            "norm": raw["norm"], "schedule": raw["train_res_scheme"],
            "finetuned": raw["finetuned"].strip().lower() == "true",
            "top1": float(raw["top1"]),
            "train_throughput": float(raw["train_throughput"]) if raw["train_throughput"] else None,
            "train_gmacs": float(raw["train_gmacs"]),
        })
    if not points:
        raise ValueError(f"no points in {path}")
    return points


def pareto_front(points: Sequence[tuple[float, float]], higher_x_better: bool = False) -> list[int]:
    """Indices of non-dominated (x, y) points, higher y always better, sorted by ascending x.

    A point is dominated when another is at least as good on both axes and strictly better on one.
    Exact duplicates keep only the first.
    """
    sign = -1.0 if higher_x_better else 1.0
    # Best x first; among equal x the highest y, so a later point must strictly raise y to survive.
    order = sorted(range(len(points)), key=lambda i: (sign * points[i][0], -points[i][1], i))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: (points[i][0], i))


def group_by(rows: Iterable[dict], key) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def config_key(r: dict) -> tuple:
    """Rows with equal keys are seeds of one configuration at one test resolution."""
    which = ("config", r["config_id"]) if r.get("config_id") else ("run", r["run_dir"])
    return which + (r.get("device"), r["test_resolution"])


def mean_std(values: Iterable) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1) of the non-None values; std is None below 2 values, mean None for none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per configuration x device x test resolution, in first-seen order.

    Measured columns hold the mean over the runs, ``<col>_std`` their sample std (None for n=1); descriptive
    columns keep their value when all runs agree, else None. ``n``: number of runs, ``seeds``: their seeds,
    sorted, ``runs``: the per-run rows themselves (for drawing every seed).
    """
    out = []
    for runs in group_by(rows, config_key).values():
        agg = {c: _common(runs, c) for c in DESCRIPTIVE_COLUMNS}
        for c in MEASURED_COLUMNS:
            agg[c], agg[f"{c}_std"] = mean_std(r.get(c) for r in runs)
        seeds = sorted((r.get("seed") for r in runs), key=lambda s: (s is None, 0 if s is None else s))
        agg.update(n=len(runs), seeds=seeds, runs=runs, run_dir=runs[0]["run_dir"] if len(runs) == 1 else None)
        out.append(agg)
    return out


def duplicate_seeds(agg_rows: Iterable[dict]) -> list[tuple[str, object, list[str]]]:
    """(config_id, seed, run dirs) for every seed that appears in more than one run of a configuration."""
    dupes = {}
    for a in agg_rows:
        by_seed = group_by((r for r in a["runs"] if r.get("seed") is not None), lambda r: r["seed"])
        for seed, runs in by_seed.items():
            if len(runs) > 1:
                dupes[(a["config_id"], seed)] = sorted({r["run_dir"] for r in runs})
    return [(cid, seed, dirs) for (cid, seed), dirs in dupes.items()]


def mean_table_row(agg: dict) -> dict:
    """An aggregated row keyed by MEAN_COLUMNS (``top1`` -> ``top1_mean``; seeds as "0 1 2")."""
    row = {c: agg.get(c) for c in MEAN_COLUMNS if c in agg}
    row.update({f"{c}_mean": agg[c] for c in MEASURED_COLUMNS})
    row["seeds"] = " ".join("?" if s is None else str(s) for s in agg["seeds"])
    return row


def _common(runs: list[dict], col: str):
    values = {r.get(col) for r in runs}
    return values.pop() if len(values) == 1 else None
