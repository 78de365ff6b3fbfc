"""torch.profiler table of one model's training step: which ops and kernels a step of G16-B0 LN+PN spends its time in.

  python scripts/profile_step.py --device cuda --res 160 --batch 64 --out profile.txt     # GPU, bf16 autocast
  python scripts/profile_step.py --device cpu --res 32 --batch 2 --warmup 1 --steps 1      # CPU, seconds

The step is the one `g16net.efficiency.measure` times (forward + cross-entropy + backward + RMSprop-TF update) on
device-resident random data, so the table explains the bench's img/s. Warmup steps run outside the profiler
(allocator, cuDNN heuristics, Triton JIT); the table averages `--steps` profiled steps. Two tables: by self time
(the kernels and leaf ops that cost, no double counting) and by total time (whole layers and autograd nodes, e.g.
Proxy Norm's forward and backward as one line each).
"""

import argparse
import sys
import time
from contextlib import nullcontext

import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.profiler import ProfilerActivity, profile, record_function

import g16net  # noqa: F401  (registers our timm names)
from g16net.efficiency.bench import PN_IMPLS, set_pn_impl


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--model", default="g16_efficientnet_b0", help="a timm name (ours take --norm)")
    p.add_argument("--norm", default="ln_pn", help="norm of our models (bn, gn, ln, ln_pn, gn_pn, ...)")
    p.add_argument("--pn-impl", default="fused", help=f"Proxy Norm implementation, one of {PN_IMPLS}")
    p.add_argument("--res", type=int, default=160, help="input size in pixels")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="autocast dtype; default: bf16 on a GPU, fp32 on a CPU (bf16 there adds casts)")
    p.add_argument("--layout", default="nchw", choices=("nchw", "nhwc"), help="nhwc = channels_last")
    p.add_argument("--warmup", type=int, default=3, help="unprofiled steps first")
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--rows", type=int, default=25, help="rows per table")
    p.add_argument("--out", default=None, help="write the tables to this file (also printed)")
    args = p.parse_args(argv)
    if args.pn_impl not in PN_IMPLS or args.pn_impl == "folded":  # folded models cannot train
        p.error(f"--pn-impl: {args.pn_impl!r} cannot train; allowed: {', '.join(i for i in PN_IMPLS if i != 'folded')}")
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.precision = args.precision or ("fp32" if dev.type == "cpu" else "bf16")
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as the bench and GPU training run (fastest conv algorithm per shape)
    ours = args.model in timm.list_models("g*_efficientnet_*")
    kw = {"norm": args.norm} if ours else {}  # timm's own models take no norm=
    net = set_pn_impl(timm.create_model(args.model, **kw), args.pn_impl).to(dev).train()
    fmt = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.res, args.res, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, net.get_classifier().out_features, (args.batch,), device=dev)
    opt = create_optimizer_v2(net, "rmsproptf", lr=1e-4, weight_decay=1e-5)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    amp = torch.autocast(dev.type, dtype=dtype) if dtype else nullcontext()

    def step():
        with amp:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(args.warmup):
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            with record_function("train_step"):
                step()
        sync()
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    where = "device" if cuda else "cpu"
    avg = prof.key_averages()
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    text = "\n".join([
        f"# {args.model} norm={args.norm if ours else '-'} pn-impl={args.pn_impl} res={args.res} batch={args.batch} "
        f"precision={args.precision} layout={args.layout} device={dev} ({name}) torch {torch.__version__}",
        f"# {args.steps} profiled training steps after {args.warmup} warmup; {ms:.1f} ms/step under the profiler "
        f"(its overhead included: read the bench for img/s)",
        f"\n## top {args.rows} by self {where} time",
        avg.table(sort_by=f"self_{where}_time_total", row_limit=args.rows),
        f"\n## top {args.rows} by total {where} time",
        avg.table(sort_by=f"{where}_time_total", row_limit=args.rows),
    ])
    if args.out:  # first: a closed stdout (a pipe to head) must not lose the file
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
