"""The benchmark grid behind `python -m g16net.bench`: every model (timm peers first, then ours per norm and Proxy
Norm implementation) measured under every (resolution, mode, precision, layout, compile) setting with the protocol of
`g16net.efficiency.measure`, interleaved and repeated; ratios against one base model at the same settings.
"""

import csv
import itertools
import platform

import timm
import torch

from ..models import GroupNormProxyAct2d, ProxyNormAct2d, fold_for_inference, is_folded
from .measure import count_params, forward_macs, measure_throughput

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


def candidates(args):
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
    """Measure the grid that `args` (`python -m g16net.bench`'s parsed arguments) names; prints each row as it is
    measured and returns them all (also appended to `args.csv` when set, row by row, so a run stopped part-way,
    e.g. out of memory at a larger resolution, keeps what it measured)."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # cuDNN times its conv algorithms per shape and keeps the fastest, as GPU training does (trainer.benchmark)
    torch.backends.cudnn.benchmark = device.startswith("cuda")
    print(_header(device, args), flush=True)
    cols = ("model", "norm", "res", "mode", "prec", "layout", "comp", "params_M", "GMACs", "img/s", "ratio",
            "range", "act_MB", "peak_MB")
    print(_fmt_row(cols), flush=True)
    rows = []
    models = [(label, norm, build()) for label, norm, build in candidates(args)]
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
                       batch=args.batch, repeats=args.repeats, device=device,
                       threads=torch.get_num_threads() if device == "cpu" else None)
            rows.append(row)
            print(_fmt_row([row[c] for c in cols]), flush=True)
            if args.csv:
                _write_row(args.csv, row, first=len(rows) == 1)
    return rows


def _write_row(path, row: dict, first: bool) -> None:
    """The CSV is (re)started by the first row and appended to by each later one, so it is complete up to the
    last row measured and no file handle outlives a failure."""
    with open(path, "w" if first else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if first:
            writer.writeheader()
        writer.writerow(row)


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
