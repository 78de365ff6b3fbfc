"""Benchmark: `python -m g16net.bench` prints img/s, memory, params and MACs for our models next to timm peers.

Every row of one run shares the protocol of `g16net.efficiency` and the ratio column divides by the first peer
measured under the same (resolution, mode, precision, layout, compile) settings, so ratios are like for like.

  python -m g16net.bench --norms bn,gn,ln,ln_pn --res 64,128 --batch 32              # CPU, fp32
  python -m g16net.bench --res 160,224 --precision bf16 --layout nchw,nhwc --compile 0,1 --batch 128   # GPU
  python -m g16net.bench --norms ln,ln_pn --base ln                          # Proxy Norm's price over plain LN

Proxy Norm models run as `--pn-impl` says: "fused" (the model as trained), "aten" (the same without the compiled
CPU kernel of `g16net.models.cpu_kernel`, as where it cannot be built), "reference" (the spec's formula op by
op), "triton" (the fused model through the Triton GPU kernel of `g16net.models.triton_kernel`, opt-in elsewhere
until measured) and, for inference rows only, "folded": `g16net.fold_for_inference`, which folds each PN layer's
post-activation affine into the layer after it (an eval-only model with the same logits). The default measures
both the fused and the folded model, so inference rows show the unfolded and the folded number side by side.
"""

import argparse
import csv
import itertools
import platform
import sys

import timm
import torch

import g16net  # noqa: F401  (registers our timm names)

from .efficiency import PRECISIONS, count_params, forward_macs, measure_throughput
from .models import NORMS, GroupNormProxyAct2d, ProxyNormAct2d, fold_for_inference, is_folded

PN_IMPLS = ("fused", "aten", "reference", "folded", "triton")


def set_pn_impl(model: torch.nn.Module, impl: str) -> torch.nn.Module:
    """Switch every LN/GN + Proxy Norm layer between the fused and the reference formulation; "aten": the fused
    one without the compiled CPU kernel (what runs where it cannot be built); "folded": the fused model in eval
    with PN's post-activation affine folded forward (`fold_for_inference`, inference only); "triton": the fused one
    through the Triton kernel (where it runs: a GPU, or Triton's interpreter)."""
    for m in model.modules():
        if isinstance(m, GroupNormProxyAct2d):
            m.fused = impl != "reference"
        if isinstance(m, ProxyNormAct2d):
            m.cpu_kernel = impl != "aten"
            m.triton_kernel = impl == "triton"
    return fold_for_inference(model.eval(), inplace=True) if impl == "folded" else model


def _csv_list(kind):
    return lambda s: [kind(v) for v in s.split(",") if v != ""]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m g16net.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=_csv_list(str), default=["g16_efficientnet_b0"],
                   help="our timm names, e.g. g16_efficientnet_b0,g1_efficientnet_b0")
    p.add_argument("--norms", type=_csv_list(str), default=["bn", "gn", "ln", "ln_pn"],
                   help=f"norms of our models, comma-separated; any of {', '.join(NORMS)}")
    p.add_argument("--peers", type=_csv_list(str), default=["efficientnet_b0", "efficientnet_b0_gn"],
                   help="timm models measured in the same run; ratios are against the first")
    p.add_argument("--res", type=_csv_list(int), default=[64, 128], help="input sizes in pixels, comma-separated")
    p.add_argument("--batch", type=int, default=32, help="images per step (training and inference)")
    p.add_argument("--modes", type=_csv_list(str), default=["train", "infer"],
                   help="train (forward + backward + optimizer step) and/or infer (no-grad forward)")
    p.add_argument("--precision", type=_csv_list(str), default=["fp32"], help=f"any of {PRECISIONS}")
    p.add_argument("--layout", type=_csv_list(str), default=["nchw"], help="nchw and/or nhwc (channels_last)")
    p.add_argument("--compile", type=_csv_list(int), default=[0], help="0 and/or 1 (torch.compile)")
    p.add_argument("--pn-impl", type=_csv_list(str), default=["fused", "folded"],
                   help=f"Proxy Norm models, any of {PN_IMPLS}; aten: without the compiled CPU kernel; triton: "
                        "the Triton GPU kernel; folded (PN's affine folded into the next layer, "
                        "g16net.fold_for_inference) is measured in infer rows only, as it cannot train")
    p.add_argument("--base", default=None,
                   help="ratio denominator: one of --peers, or one of --norms for our model with that norm (e.g. ln "
                        "to price Proxy Norm against plain LayerNorm); default: the first peer")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (ImageNet: 1000)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (allocator, autotuning)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3,
                   help="measure every model this many times, interleaved, and report the median (CPU clocks drift)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    _check_choices(p, "--norms", args.norms, NORMS)
    _check_choices(p, "--modes", args.modes, ("train", "infer"))
    _check_choices(p, "--precision", args.precision, PRECISIONS)
    _check_choices(p, "--layout", args.layout, ("nchw", "nhwc"))
    _check_choices(p, "--pn-impl", args.pn_impl, PN_IMPLS)
    _check_choices(p, "--compile", args.compile, (0, 1))
    if "triton" in args.pn_impl:  # elsewhere the layers would quietly take another path under a "triton" label
        from .models import triton_kernel

        on_cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
        if not triton_kernel.available() or (on_cpu and not triton_kernel.INTERPRET):
            p.error("--pn-impl triton needs triton and a GPU (or TRITON_INTERPRET=1 for a CPU correctness run); "
                    "allowed here: " + ", ".join(i for i in PN_IMPLS if i != "triton"))
    for name in args.models + args.peers:
        if not timm.is_model(name):
            p.error(f"unknown model {name!r}; ours: {', '.join(timm.list_models('g*_efficientnet_*'))}")
    if args.base is not None and args.base not in args.peers + args.norms:
        p.error(f"--base {args.base!r} is neither a peer nor a norm of this run; allowed: "
                f"{', '.join(args.peers + args.norms)}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if min(args.res) < 32:
        p.error(f"--res values must be >= 32 (EfficientNet downsamples 32x), got {args.res}")
    return args


def _check_choices(p, flag, values, allowed):
    bad = [v for v in values if v not in allowed]
    if bad:
        p.error(f"{flag}: unknown {bad}; allowed: {', '.join(map(str, allowed))}")


def _candidates(args):
    """(label, norm, build) for every model of the run, peers first."""
    for name in args.peers:
        yield name, "-", lambda name=name: timm.create_model(name, num_classes=args.num_classes)
    for name, norm in itertools.product(args.models, args.norms):
        impls = args.pn_impl if norm.endswith("_pn") else ["fused"]
        for impl in impls:
            label = f"{name}" + (f" [{impl}]" if len(impls) > 1 else "")
            yield label, norm, lambda name=name, norm=norm, impl=impl: set_pn_impl(
                timm.create_model(name, norm=norm, num_classes=args.num_classes), impl)


def run(args) -> list[dict]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # cuDNN times its conv algorithms per shape and keeps the fastest, as GPU training does (trainer.benchmark)
    torch.backends.cudnn.benchmark = device.startswith("cuda")
    print(_header(device, args), flush=True)
    cols = ("model", "norm", "res", "mode", "prec", "layout", "comp", "params_M", "GMACs", "img/s", "ratio",
            "range", "act_MB", "peak_MB")
    print(_fmt_row(cols), flush=True)
    rows = []
    models = [(label, norm, build()) for label, norm, build in _candidates(args)]
    counted = {}  # (model, res) -> MACs: a count traces the model, ~1 s on CPU, and is the same for every mode

    def macs(model, res):
        if (id(model), res) not in counted:
            counted[id(model), res] = forward_macs(model, res)
        return counted[id(model), res]

    base_name = args.base or (args.peers[0] if args.peers else None)
    # The first model matching --base (a peer's name, or our model's norm); the first row when none matches.
    base_i = next((i for i, (label, norm, _) in enumerate(models) if base_name in (label, norm)), 0)
    for res, mode, prec, layout, comp in itertools.product(args.res, args.modes, args.precision, args.layout,
                                                           args.compile):
        samples = [[] for _ in models]
        for _ in range(args.repeats):
            for i, (_, _, model) in enumerate(models):
                if mode == "train" and is_folded(model):
                    continue
                samples[i].append(measure_throughput(model, res, args.batch, mode, args.warmup, args.steps, prec,
                                                     layout == "nhwc", bool(comp), device))
        medians = [sorted(runs, key=lambda m: m.img_per_s)[len(runs) // 2] if runs else None for runs in samples]
        base = medians[base_i]  # None in training rows when --base names a folded model
        for (label, norm, model), t, runs in zip(models, medians, samples):
            if t is None:  # a folded model in a training row
                continue
            # Each repeat measured every model once, side by side: its ratios are paired, and their range is what
            # the machine's drift did to this ratio during the run.
            paired = [a.img_per_s / b.img_per_s for a, b in zip(runs, samples[base_i])] if base else []
            lo, hi = (min(paired), max(paired)) if paired else (None, None)
            row = dict(model=label, norm=norm, res=res, mode=mode, prec=prec, layout=layout, comp=comp,
                       params_M=count_params(model) / 1e6, GMACs=macs(model, res) / 1e9,
                       **{"img/s": t.img_per_s, "ratio": None if base is None else t.img_per_s / base.img_per_s,
                          "range": None if lo is None else f"{lo:.2f}-{hi:.2f}", "ratio_lo": lo, "ratio_hi": hi,
                          "act_MB": t.activation_mb, "peak_MB": t.peak_mem_mb},
                       batch=args.batch, repeats=args.repeats, device=device)
            rows.append(row)
            print(_fmt_row([row[c] for c in cols]), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def _header(device, args) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    return (f"# device={device} ({name}), torch {torch.__version__}, timm {timm.__version__}, "
            f"threads={torch.get_num_threads()}, batch={args.batch}, warmup={args.warmup}, steps={args.steps}, "
            f"median of {args.repeats} interleaved repeats; ratio = img/s / "
            f"{args.base or (args.peers[0] if args.peers else 'first row')} at the same settings; range = lowest-"
            f"highest ratio of a single repeat (a difference inside it is drift, not code)")


def _fmt_row(values) -> str:
    widths = (32, 6, 4, 5, 5, 6, 4, 8, 6, 8, 6, 9, 8, 8)
    out = []
    for v, w in zip(values, widths):
        s = "-" if v is None else f"{v:.3f}" if isinstance(v, float) and w <= 6 else f"{v:.1f}" if isinstance(
            v, float) else str(v)
        out.append(s.rjust(w) if isinstance(v, (int, float)) else s.ljust(w))
    return " ".join(out)


def main(argv=None):
    rows = run(parse_args(argv))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
