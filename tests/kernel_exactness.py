"""Errors of the fused CPU kernel and of ATen's fp32 ops against fp64, on the same inputs: run as a script under
each `ATEN_CPU_CAPABILITY` by tests/test_cpu_kernel.py (the kernel is built for the instruction set torch picks).

Prints one JSON object: the capability torch ran with, and for each case and quantity the pair (kernel error,
ATen fp32 error), each the largest absolute error divided by the largest absolute fp64 value of that tensor.
"""

import json
import sys

import torch
import torch.nn.functional as F

from g16net.models import cpu_kernel
from g16net.models.proxy_norm import gaussian_quantiles


def _err(t: torch.Tensor, ref: torch.Tensor) -> float:
    return ((t.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _layer(x, gamma, beta, mu, s, groups):
    return (F.silu(F.group_norm(x, groups, gamma, beta, 1e-3)) - mu.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)


def _layer_errors(ops, x, gamma, beta, mu, s, groups, device="cpu") -> dict:
    """Forward and the five gradients: the kernel (through its registered derivative, on `device`) and ATen's
    ops, in fp32 on the CPU, each against fp64; any op with the CPU kernel's `forward` signature."""
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for name, fn in (("kernel", lambda *t: ops.forward(*t, groups, 1e-3)[0]),
                     ("aten", lambda *t: _layer(*t, groups)), ("fp64", lambda *t: _layer(*t, groups))):
        dtype = torch.float64 if name == "fp64" else torch.float32
        on = device if name == "kernel" else "cpu"
        inputs = [t.to(on, dtype).requires_grad_(True) for t in (x, gamma, beta, mu, s)]
        out = fn(*inputs)
        grads = torch.autograd.grad((out * w.to(on, dtype)).sum(), inputs)
        results[name] = [t.detach().cpu() for t in (out, *grads)]
    names = ("out", "dx", "dgamma", "dbeta", "dmu", "ds")
    return {n: (_err(k, r), _err(a, r)) for n, k, a, r in zip(names, results["kernel"], results["aten"],
                                                               results["fp64"])}


def _moment_errors(ops, a, b) -> dict:
    """mu, s and their gradients: the kernel's op against ATen fp32 (mean, two-pass var, autograd)."""
    u = gaussian_quantiles(200)
    w = torch.randn(2, len(a), generator=torch.Generator().manual_seed(2))
    results = {}
    for name in ("kernel", "aten", "fp64"):
        dtype = torch.float64 if name == "fp64" else torch.float32
        ai, bi = (t.to(dtype).requires_grad_(True) for t in (a, b))
        if name == "kernel":
            mu, s, _ = ops.proxy_moments(ai, bi, u, 0.03, True)
        else:
            z = F.silu(ai[:, None] * u.to(dtype) + bi[:, None])
            mu, s = z.mean(1), (z.var(1, unbiased=False) + 0.03).rsqrt()
        loss = (w[0].to(dtype) * mu + w[1].to(dtype) * s).sum()
        results[name] = [mu.detach(), s.detach(), *torch.autograd.grad(loss, (ai, bi))]
    names = ("mu", "s", "da", "db")
    return {n: (_err(k, r), _err(t, r)) for n, k, t, r in zip(names, results["kernel"], results["aten"],
                                                               results["fp64"])}


def main() -> int:
    ops = cpu_kernel.ops()
    report = {"capability": torch.backends.cpu.get_cpu_capability(), "built": ops is not None, "cases": {}}
    if ops is None:
        print(json.dumps(report))
        return 0
    g = torch.Generator().manual_seed(0)
    c = 32
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.3
    mu, s = torch.rand(c, generator=g) * 0.3, torch.rand(c, generator=g) + 0.8
    x = torch.randn(4, c, 12, 12, generator=g)
    cases = {
        "layer: typical": (x * 3 + 1, gamma, beta, mu, s),
        # |x| far above its spread: group statistics and x - mean cancel
        "layer: large |x|": (x + 1e3, gamma, beta, mu, s),
        "layer: large scale": (x * 1e4, gamma, beta, mu, s),
        # large s and mu (a proxy of small variance): the centred sum of g (z - mu) in backward
        "layer: large s": (x, gamma * 0.1, beta + 4, mu + 4, s * 5),
    }
    for name, args in cases.items():
        for groups in (1, 4):
            report["cases"][f"{name}, groups={groups}"] = _layer_errors(ops, *args, groups)
    a, b = torch.randn(300, generator=g) * 0.5 + 1.0, torch.randn(300, generator=g) * 0.5
    moment_cases = {
        "moments: typical": (a, b),
        "moments: large s (small a, large |b|)": (torch.rand(300, generator=g) * 0.3 + 0.05, b * 8),
        "moments: tiny a": (torch.rand(300, generator=g) * 0.05, b * 6),
        "moments: large a": (a * 8, b * 4),
    }
    for name, (a_, b_) in moment_cases.items():
        report["cases"][name] = _moment_errors(ops, a_, b_)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
