"""Throughput for collected runs from one interleaved `python -m g16net.bench` run (`collect --throughput`).

On a small CPU the per-run protocol drifts (up to +-25% between seeds of one configuration) and runs trained two
at a time would skew it, so a CPU study can train with ``throughput.enabled=false`` and measure each (model, norm,
resolution) once, side by side, with the benchmark. Each collected row then takes its training throughput from
the bench row (model, norm, training resolution, "train") and its inference throughput from (model, norm, test
resolution, "infer"). Only bench rows of the model as trained count: NCHW, no compile, the fused Proxy Norm, at the
run's precision.
"""

from __future__ import annotations

import csv
from pathlib import Path

REQUIRED = ("model", "norm", "res", "mode", "prec", "layout", "comp", "img/s", "batch", "device")
RUN_PRECISION = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}


class BenchJoinError(ValueError):
    """The bench CSV is unusable or lacks a measurement some run needs; nothing has been changed."""


def read_bench(paths: list) -> dict[tuple, dict]:
    """(model, norm, res, mode, prec) -> bench row, for the rows of ``paths`` (bench CSVs, e.g. one per set of
    resolutions) that measured a model as trained. A measurement present twice is refused."""
    table = {}
    for path in paths:
        _read_one(Path(path), table)
    return table


def _read_one(path: Path, table: dict) -> None:
    if not path.is_file():
        raise BenchJoinError(f"--throughput: {path} does not exist (write it with python -m g16net.bench --csv)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchJoinError(f"--throughput: {path} is not a python -m g16net.bench CSV: no column(s) "
                                 f"{', '.join(missing)}")
        for row in reader:
            name, _, impl = row["model"].partition(" [")
            if impl.rstrip("]") not in ("", "fused") or row["layout"] != "nchw" or row["comp"] != "0":
                continue
            key = (name, row["norm"], int(row["res"]), row["mode"], row["prec"])
            if key in table:
                raise BenchJoinError(f"--throughput: {_fmt(key)} is measured twice (second time in {path}); "
                                     "give each measurement once")
            table[key] = row


def join_throughput(rows: list[dict], bench: dict[tuple, dict], source: str) -> None:
    """Replace every row's training and inference throughput (and the device they were measured on) with the
    bench's; raises BenchJoinError naming every missing measurement before any row is changed."""
    found, missing = [], set()
    for r in rows:
        prec = RUN_PRECISION.get(r.get("precision"), r.get("precision"))
        keys = ((r["model_name"], r["norm"], r["train_resolution"], "train", prec),
                (r["model_name"], r["norm"], r["test_resolution"], "infer", prec))
        missing.update(k for k in keys if k not in bench)
        found.append(tuple(bench.get(k) for k in keys))
    if missing:
        have = sorted({_fmt(k) for k in bench})
        raise BenchJoinError(f"--throughput: {source} has no measurement of {'; '.join(sorted(map(_fmt, missing)))}"
                             f". It holds: {'; '.join(have) or 'none'}")
    for r, (train, infer) in zip(rows, found):
        threads = f"{train['threads']} threads, " if train.get("threads") else ""
        r.update(train_throughput=float(train["img/s"]), infer_throughput=float(infer["img/s"]),
                 throughput_batch_size=int(train["batch"]), device=f"{train['device']} ({threads}bench)")


def _fmt(key) -> str:
    name, norm, res, mode, prec = key
    return f"{name} {norm} {res} px {mode} {prec}"
