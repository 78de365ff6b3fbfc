"""Collect finished runs' metrics.json into a results CSV plus seed means.

    python -m g16net.collect outputs/ multirun/2026-11-22/12-00-00 --out results.csv

writes ``results.csv`` (one row per run and test resolution) and ``results_mean.csv`` (seed means) next to it; the
columns and what makes runs seeds of one configuration: `g16net.studies.collect`. Failed, unfinished or malformed
runs are listed on stderr and skipped; they never stop the collection. ``--throughput bench.csv`` takes every
run's throughputs from one interleaved ``python -m g16net.bench`` run instead (`g16net.studies.bench_join`).
"""

import argparse
import sys

from .studies.bench_join import BenchJoinError, join_throughput, read_bench
from .studies.collect import collect, format_skipped, write_tables
from .studies.results import STD_NOTE, duplicate_seeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m g16net.collect", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs or any folder containing them")
    parser.add_argument("--out", required=True, help="per-run CSV to write (replaced atomically); the seed "
                        "means go next to it as <stem>_mean.csv")
    parser.add_argument("--throughput", metavar="BENCH_CSV", nargs="+", default=None,
                        help="take training and inference img/s from these `python -m g16net.bench --csv` files "
                        "(model, norm, resolution as each run trained and tested) instead of the runs' own")
    args = parser.parse_args(argv)
    if not str(args.out).endswith(".csv"):  # the means file is named after it
        parser.error(f"--out must name a .csv file, got {args.out!r}")
    try:
        bench = read_bench(args.throughput) if args.throughput else None
        rows, skipped = collect(args.paths)
        if bench is not None:
            join_throughput(rows, bench, ", ".join(args.throughput))
    except (FileNotFoundError, BenchJoinError) as e:
        parser.error(str(e))  # exits 2, nothing written
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
