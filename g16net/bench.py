"""Benchmark: `python -m g16net.bench` prints img/s, memory, params and MACs for our models next to timm peers.

Every row of one run shares the protocol of `g16net.efficiency.measure` and the ratio column divides by the first peer
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
import sys

import timm
import torch

from .efficiency.bench import PN_IMPLS, run
from .efficiency.measure import PRECISIONS
from .models import NORMS


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


def main(argv=None):
    rows = run(parse_args(argv))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
