"""`python -m g16net.diagnose`: where a norm puts a network's activation power (docs/diagnostics.md).

    python -m g16net.diagnose init --norms bn,in,ln,gn,ln_pn,gn_pn,ln_ws --seeds 0,1,2 --out DIR   # at initialization
    python -m g16net.diagnose runs RUN_DIR [RUN_DIR ...] --out DIR          # finished runs' final weights
    python -m g16net.diagnose epochs RUN_DIR [RUN_DIR ...] --depths 0,24,-1 --out DIR   # diagnostics.every_epoch

`init` and `runs` feed one fixed batch (Gaussian, or the first images of the data's validation set) through each
model with forward hooks on its norm layers, and write power.csv (one row per model, depth and tap) and power.png
/.pdf (stacked terms vs depth, one column per norm; seeds pooled as mean +- std). `epochs` draws the per-epoch
records that training writes with `diagnostics.every_epoch=true` (`<run>/diagnostics/power_epochs.csv`).
"""

import argparse
import csv
import sys
from pathlib import Path

import torch

from .core.config import ConfigError
from .diagnostics.power import TERMS
from .diagnostics.summary import SUMMARY_COLUMNS, deep_shares, format_summary
from .diagnostics.taps import MODES, TAPS, diagnose_model
from .models import NORMS, SIZES, check_norm, create_model

COLUMNS = ("norm", "seed", "source", "mode", "input", "resolution", "batch", "depth", "layer", "tap", "channels",
           "height", "width", *TERMS, "power")
EPOCH_RECORD = Path("diagnostics") / "power_epochs.csv"  # in a run dir


def _csv_list(kind):
    def parse(s):
        try:
            return [kind(v) for v in s.split(",") if v != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of {kind.__name__}") from None
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m g16net.diagnose", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    measure = argparse.ArgumentParser(add_help=False)
    measure.add_argument("--out", required=True, help="output directory (power.csv, power.png, power.pdf)")
    measure.add_argument("--batch", type=int, default=16, help="images in the fixed batch (>= 2)")
    measure.add_argument("--res", type=int, default=None,
                         help="input pixels (>= 32); default 64 for init, the run's native resolution for runs")
    measure.add_argument("--input", choices=("gaussian", "data"), default="gaussian",
                         help="gaussian: N(0, 1) pixels, the same batch for every model (default); data: the first "
                              "images of the validation set, normalized as in training")
    measure.add_argument("--mode", choices=MODES, default="train",
                         help="train (default): norm layers use batch statistics (BN; the others have none); eval: "
                              "BN's running statistics. Dropout and stochastic depth are off in both")
    measure.add_argument("--share", action="store_true", help="draw each term's share of E[y^2] instead of power")
    measure.add_argument("--deepest", type=int, default=5,
                         help="summary.csv: each term's share averaged over each tap's last N depths (default 5)")

    init = sub.add_parser("init", parents=[measure], help="models at initialization")
    init.add_argument("--norms", type=_csv_list(str), default=["bn", "in", "ln", "gn", "ln_pn", "gn_pn", "ln_ws"],
                      help=f"comma-separated, any of {', '.join(NORMS)} (default: the Proxy Norm paper's seven)")
    init.add_argument("--seeds", type=_csv_list(int), default=[0], help="model seeds, comma-separated")
    init.add_argument("--size", default="b0", help=f"any of {', '.join(SIZES)}")
    init.add_argument("--group-size", type=int, default=16, help="channels per spatial conv group (1: depthwise)")
    init.add_argument("--expand-ratio", type=float, default=4, help="MBConv expansion (G16: 4, EfficientNet: 6)")
    init.add_argument("--num-classes", type=int, default=10)
    init.add_argument("--data", default="synthetic", help="with --input data: a conf/data/<name>.yaml")
    init.add_argument("--data-override", action="append", default=[], metavar="KEY=VALUE",
                      help="with --input data: a Hydra override of the data config, e.g. data.root=/data/cifar")

    runs = sub.add_parser("runs", parents=[measure], help="finished runs' final weights (g16net.load_run)")
    runs.add_argument("run_dirs", nargs="+", help="run directories")

    epochs = sub.add_parser("epochs", help="draw the per-epoch records of runs trained with diagnostics.every_epoch")
    epochs.add_argument("run_dirs", nargs="+", help="run directories")
    epochs.add_argument("--out", required=True, help="output directory (power_epochs.csv, .png, .pdf)")
    epochs.add_argument("--depths", type=_csv_list(int), default=[0, -1],
                        help="tap indices to draw, comma-separated; negative counts from the last (default 0,-1)")
    epochs.add_argument("--tap", choices=TAPS, default="act", help="act (default): after the activation; norm: "
                        "after the normalization")
    epochs.add_argument("--phase", choices=("train", "finetune"), default="train")
    epochs.add_argument("--share", action="store_true", help="draw each term's share of E[y^2] instead of power")
    epochs.add_argument("--deepest", type=int, default=5,
                        help="summary.csv: shares over each tap's last N depths at the phase's last epoch (default 5)")

    args = p.parse_args(argv)
    if args.deepest < 1:
        p.error(f"--deepest {args.deepest}: needs >= 1")
    if args.command in ("init", "runs"):
        if args.batch < 2:
            p.error(f"--batch {args.batch}: needs >= 2 (the instance-mean term is a variance over samples)")
        if args.res is not None and args.res < 32:
            p.error(f"--res {args.res}: must be >= 32 (the model downsamples 32x)")
    if args.command == "init":
        bad = [n for n in args.norms if n not in NORMS]
        if bad or not args.norms:
            p.error(f"--norms: unknown {bad}; allowed: {', '.join(NORMS)}")
        if args.size not in SIZES:
            p.error(f"--size {args.size!r}: allowed: {', '.join(SIZES)}")
        if not args.seeds:
            p.error("--seeds: give at least one seed")
        if args.input == "gaussian" and (args.data_override or args.data != "synthetic"):
            p.error("--data / --data-override apply with --input data only")
    return args


def _gaussian(batch: int, res: int) -> torch.Tensor:
    """The same batch for every model and seed (its own generator)."""
    return torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0))


def _data_batch(cfg, batch: int, res: int) -> torch.Tensor:
    """The first `batch` images of the validation set at `res`, normalized as the training job does."""
    from .backends.on_device import Normalize
    from .run.runner import load_data

    data = load_data(cfg)
    ds = data.val_dataset(res)
    if len(ds) < batch:
        raise ConfigError(f"--batch {batch} is more than the {len(ds)} validation images of {cfg.data.name!r}")
    images = torch.stack([ds[i][0] for i in range(batch)])
    return Normalize(data.mean, data.std)(images)


def _compose_data(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .core.conf_path import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"data={name}", *overrides])


def _rows(model, x, mode, norm, **meta) -> list[dict]:
    return [{"norm": norm, **meta, "mode": mode, "resolution": x.shape[-1], "batch": len(x), **r}
            for r in diagnose_model(model, x, mode, norm)]


def measure_init(args) -> list[dict]:
    res = args.res or 64
    x = _data_batch(_compose_data(args.data, args.data_override), args.batch, res) if args.input == "data" \
        else _gaussian(args.batch, res)
    rows = []
    for norm in args.norms:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = create_model(args.size, args.group_size, args.expand_ratio, norm, args.num_classes)
            rows += _rows(model, x, args.mode, norm, seed=seed, source="init", input=args.input)
            print(f"[g16net] diagnose: {norm} seed {seed} at {res} px")
    return rows


def measure_runs(args) -> list[dict]:
    from .run.loader import load_run, run_config

    rows = []
    for run_dir in args.run_dirs:
        cfg = run_config(run_dir)
        res = args.res or cfg.data.native_resolution or SIZES[cfg.model.size].native_res
        x = _data_batch(cfg, args.batch, res) if args.input == "data" else _gaussian(args.batch, res)
        model = load_run(run_dir)
        rows += _rows(model, x, args.mode, model.norm, seed=cfg.seed, source=str(run_dir), input=args.input)
        print(f"[g16net] diagnose: {run_dir} ({model.norm}, seed {cfg.seed}) at {res} px")
    return rows


def read_epoch_records(run_dirs) -> list[dict]:
    """Every run's per-epoch record with its norm and seed; a re-recorded (phase, epoch) keeps its last rows."""
    from .run.loader import run_config

    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / EPOCH_RECORD
        if not path.is_file():
            raise ConfigError(f"{run_dir} has no {EPOCH_RECORD}: train it with diagnostics.every_epoch=true")
        cfg = run_config(run_dir)
        latest = {}
        for r in csv.DictReader(path.open()):
            latest[(r["phase"], r["epoch"], r["depth"], r["tap"])] = r
        rows += [{**r, "norm": cfg.norm.name, "seed": cfg.seed, "source": str(run_dir)} for r in latest.values()]
    return rows


def last_epoch(rows: list[dict], phase: str) -> list[dict]:
    """Each run's rows at its last recorded epoch of `phase`."""
    mine = [r for r in rows if r["phase"] == phase]
    last = {}
    for r in mine:
        last[r["source"]] = max(last.get(r["source"], 0), int(r["epoch"]))
    return [r for r in mine if int(r["epoch"]) == last[r["source"]]]


def write_csv(rows: list[dict], path: Path, columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .diagnostics.figs import depth_figure, epoch_figure

    out = Path(args.out)
    try:
        if args.command == "epochs":
            rows = read_epoch_records(args.run_dirs)
            write_csv(rows, out / "power_epochs.csv", ("norm", "seed", "source", *rows[0].keys() - {
                "norm", "seed", "source"}) if rows else ())
            paths = epoch_figure(rows, out, args.depths, args.tap, args.phase, args.share)
            summary = deep_shares(last_epoch(rows, args.phase), args.deepest)
        else:
            for n in getattr(args, "norms", ()):
                check_norm(n)
            rows = measure_init(args) if args.command == "init" else measure_runs(args)
            write_csv(rows, out / "power.csv", COLUMNS)
            src = "initialization" if args.command == "init" else "trained weights"
            paths = depth_figure(rows, out, share=args.share,
                                 title=f"{src}; {args.input} input, {rows[0]['batch']} images at "
                                       f"{rows[0]['resolution']} px; norm layers in {args.mode} mode")
            summary = deep_shares(rows, args.deepest)
        write_csv(summary, out / "summary.csv", SUMMARY_COLUMNS)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"each term's share of E[y^2] over the last {args.deepest} depths of each tap, mean +- std over seeds"
          + (f" ({args.phase} phase, last epoch)" if args.command == "epochs" else ""))
    print(format_summary(summary, list(NORMS)))
    print("\n".join(map(str, [out / ("power_epochs.csv" if args.command == "epochs" else "power.csv"),
                              out / "summary.csv", *paths])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
