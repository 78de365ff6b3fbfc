"""Shared helpers for results tables: column schema, series labels, CSV loading, Pareto fronts.

Used by ``g16net.collect`` (writes results.csv) and ``g16net.figs`` (plots it). Pure stdlib.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

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
]
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS

INT_COLUMNS = {
    "group_size", "expand_ratio", "train_resolution", "test_resolution", "native_resolution", "params",
    "epochs", "finetune_epochs", "num_classes", "throughput_batch_size", "finetune_resolution", "schema",
}
FLOAT_COLUMNS = {
    "top1", "top5", "train_macs", "test_macs", "train_throughput", "train_throughput_pipeline",
    "infer_throughput", "wall_time_s", "loss", "top1_before_finetune", "top5_before_finetune",
    "infer_throughput_pipeline",
}
BOOL_COLUMNS = {"finetuned", "headline"}

NORM_LABELS = {"bn": "BN", "gn": "GN", "ln": "LN", "ln_pn": "LN+PN", "gn_pn": "GN+PN", "evos0": "EvoNorm-S0"}
SCHEDULE_LABELS = {"half": "Half", "native": "Native"}

PAPER_POINTS_CSV = Path(__file__).resolve().parent / "reference" / "paper_points.csv"


def norm_label(norm: str) -> str:
    return NORM_LABELS.get(norm, norm.upper())


def series_label(group_size, norm: str, schedule: str, baseline: bool = False) -> str:
    """Paper-style label, e.g. ``G16-LN+PN-Half``; ``baseline`` marks a no-finetune twin series."""
    sched = SCHEDULE_LABELS.get(schedule, str(schedule).capitalize())
    base = f"G{group_size}-{norm_label(norm)}"
    if not baseline:
        return f"{base}-{sched}"
    # The paper calls the un-finetuned native-resolution runs "Baseline" (G1-GN-Baseline).
    return f"{base}-Baseline" if schedule == "native" else f"{base}-{sched}-NoFT"


def assign_series(rows: list[dict]) -> None:
    """Fill ``row["series"]`` in place.

    One series per (group_size, norm, schedule). Runs with finetuned=False only become their own
    "Baseline" series when the same triple also has finetuned=True runs; otherwise nothing to separate.
    """
    seen: dict[tuple, set] = {}
    for r in rows:
        seen.setdefault(_series_key(r), set()).add(r.get("finetuned"))
    for r in rows:
        split = {True, False} <= seen[_series_key(r)]
        r["series"] = series_label(r["group_size"], r["norm"], r["schedule"],
                                   baseline=split and r.get("finetuned") is False)


def _series_key(r: dict) -> tuple:
    return (r["group_size"], r["norm"], r["schedule"])


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
