"""The Triton kernel of LN/GN + Proxy Norm + SiLU (g16net/models/triton_kernel.py) against autograd of the
reference formula: values, statistics and all five gradients, NCHW and channels_last, fp32/fp64/bf16/fp16,
what autograd saves, the layer's opt-in switch and torch.compile.

Without a GPU the kernels run in Triton's interpreter, which must be on before triton is first imported. This
process imported triton already (through g16net), so `test_cpu_interpreter_cases` runs this file's "cpu-interp"
cases in one child pytest with TRITON_INTERPRET=1. On a GPU, `pytest -k cuda` runs the same cases compiled.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from g16net.models import GroupNormProxyAct2d, ProxyNormAct2d, triton_kernel

OPS = torch.ops.g16net_pn_triton if triton_kernel.triton is not None else None
INTERPRETED = triton_kernel.INTERPRET
# In the interpreter run, CPU cases only (CUDA tensors would be interpreted too); otherwise compiled CUDA cases.
DEVICES = ["cpu-interp"] if INTERPRETED else [pytest.param("cuda", marks=pytest.mark.skipif(
    not (triton_kernel.available() and torch.cuda.is_available()), reason="no CUDA device or no triton"))]
SHAPES = [((3, 6, 5, 7), 1), ((3, 6, 5, 7), 2), ((2, 16, 3, 3), 1), ((2, 16, 3, 3), 4), ((1, 8, 9, 4), 1),
          ((1, 8, 9, 4), 2)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.fixture(params=DEVICES)
def device(request):
    return "cpu" if request.param == "cpu-interp" else "cuda"


def _small_tiles(monkeypatch):
    """Tiles of 16 elements aiming at 12 programs: on these tiny maps several channel blocks, and tile rows split
    into chunks of several tiles each, so every combining step of the statistics and sums runs."""
    monkeypatch.setattr(triton_kernel, "_TILE", 16)
    monkeypatch.setattr(triton_kernel, "_MAX_PIXELS", 8)
    monkeypatch.setattr(triton_kernel, "_programs", lambda device: 12)


def _inputs(shape, layout, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1  # a mean off zero: the statistics' care
    params = [torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.3, torch.rand(c, generator=g) * 0.3,
              torch.rand(c, generator=g) + 0.8]  # gamma, beta, mu, s
    params = [p.to(device, torch.float64 if dtype == torch.float64 else torch.float32) for p in params]
    return x.to(device, dtype).contiguous(memory_format=layout), params


def _reference(x, gamma, beta, mu, s, groups, eps=1e-3):
    """The spec's formula: group_norm without affine, then PN (`ProxyNormAct2d.forward`, with given mu and s)."""
    y = F.silu(F.group_norm(x, groups, None, None, eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1))
    return (y - mu.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)


def _run(op_inputs, groups, grad_out):
    """The op's outputs and the gradients of <out, grad_out> for x and the four per-channel tensors."""
    leaves = [t.detach().clone().requires_grad_(True) for t in op_inputs]  # clone keeps x's layout
    out, mean, rstd = OPS.forward(*leaves, groups, 1e-3)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out, mean, rstd, grads


def _reference_run(op_inputs, groups, grad_out):
    leaves = [t.detach().double().requires_grad_(True) for t in op_inputs]
    out = _reference(*leaves, groups)
    return out, torch.autograd.grad(out, leaves, grad_out.double())


def _close(a, b, rel):
    """|a - b| within rel of b's largest entry (gradients are sums whose scale is set by the largest terms)."""
    return (a.double() - b).abs().max().item() <= rel * (b.abs().max().item() + 1e-3)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape,groups", SHAPES, ids=[f"{'x'.join(map(str, s))}-g{g}" for s, g in SHAPES])
def test_forward_and_gradients_match_the_reference(device, shape, groups, layout, monkeypatch):
    x, params = _inputs(shape, layout, device)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    ref, ref_grads = _reference_run([x, *params], groups, grad_out)
    n, c = shape[:2]
    _, mean_ref, rstd_ref = torch.ops.aten.native_group_norm(x.double(), None, None, n, c, x[0, 0].numel(), groups,
                                                             1e-3)
    for tiles in ("default", "small"):  # one tile and chunk per row, then many of each
        if tiles == "small":
            _small_tiles(monkeypatch)
        out, mean, rstd, grads = _run([x, *params], groups, grad_out)
        assert out.dtype == x.dtype and out.stride() == x.stride(), tiles  # x's layout, no copy to NCHW
        assert mean.shape == rstd.shape == (n, groups) and mean.dtype == torch.float32
        assert torch.allclose(out.double(), ref, atol=2e-6, rtol=1e-5), tiles
        assert torch.allclose(mean.double(), mean_ref, atol=1e-6) and torch.allclose(rstd.double(), rstd_ref, rtol=1e-5)
        assert grads[0].stride() == x.stride()
        for name, g, r in zip(("x", "gamma", "beta", "mu", "s"), grads, ref_grads):
            assert _close(g, r, 1e-5), (tiles, name)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_fp64_is_exact_and_passes_gradcheck(device, layout, monkeypatch):
    """fp64 inputs are computed in fp64 throughout: equal to the fp64 reference to ~1e-14, and gradcheck."""
    _small_tiles(monkeypatch)
    x, params = _inputs((2, 6, 3, 5), layout, device, torch.float64)
    grad_out = torch.randn(2, 6, 3, 5, dtype=torch.float64, device=device)
    out, mean, rstd, grads = _run([x, *params], 2, grad_out)
    ref, ref_grads = _reference_run([x, *params], 2, grad_out)
    assert mean.dtype == torch.float64 and torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert all(_close(g, r, 1e-12) for g, r in zip(grads, ref_grads))
    monkeypatch.undo()  # gradcheck's many calls on one tile per row: each interpreted program costs
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *params)]
    assert torch.autograd.gradcheck(lambda *t: OPS.forward(*t, 2, 1e-3)[0], leaves, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_in_and_out_with_fp32_arithmetic(device, dtype):
    """bf16/fp16 x, fp32 parameters (as under autocast): the output and dx in x's dtype, within its rounding of the
    reference computed from the same (rounded) inputs; the parameters' gradients in fp32, summed in fp32."""
    x, params = _inputs((2, 16, 6, 5), torch.channels_last, device, dtype)
    grad_out = torch.randn(2, 16, 6, 5, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, mean, rstd, grads = _run([x, *params], 4, grad_out)
    ref, ref_grads = _reference_run([x, *params], 4, grad_out)
    ulp = torch.finfo(dtype).eps
    assert out.dtype == grads[0].dtype == dtype and mean.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.double(), ref, atol=ulp, rtol=ulp)  # one rounding of the output
    assert _close(grads[0], ref_grads[0], 2 * ulp)
    assert all(g.dtype == torch.float32 and _close(g, r, 1e-5) for g, r in zip(grads[1:], ref_grads[1:]))


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_autograd_saves_x_itself_and_only_small_tensors_besides(device, layout):
    x, params = _inputs((2, 8, 4, 3), layout, device)
    x.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = OPS.forward(x, *params, 2, 1e-3)[0]
    big = [t for t in saved if t.numel() > 8]
    assert len(big) == 1 and big[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert big[0].stride() == x.stride() and len(saved) == 7  # x, gamma, beta, mu, s, mean, rstd
    assert out.stride() == x.stride()


def test_nan_stays_in_its_own_sample(device):
    """A NaN must reach the loss (the run-safety guard stops on it) and must not leak into other samples."""
    x, params = _inputs((3, 8, 4, 4), torch.contiguous_format, device)
    x[1, 2, 0, 0] = float("nan")
    out, _, _, (dx, *_) = _run([x, *params], 1, torch.ones_like(x))
    assert out[1].isnan().all() and out[[0, 2]].isfinite().all()
    assert dx[1].isnan().all() and dx[[0, 2]].isfinite().all()


@pytest.mark.parametrize("case", ["large |x|", "large s"])
def test_as_exact_as_aten_fp32_where_fp32_sums_cancel(device, case):
    """The CPU kernel's exactness bound (tests/kernel_exactness.py): against fp64, output and five gradients within
    8x ATen fp32's error (or 8 ulps): |x| far above its spread (centred before the affine), and a large mu and s
    (the backward's sum of g (z - mu) taken centred)."""
    try:
        from kernel_exactness import _layer_errors
    except ImportError:  # tests/ became a package
        from tests.kernel_exactness import _layer_errors
    x, (gamma, beta, mu, s) = _inputs((2, 16, 6, 6), torch.contiguous_format, device)
    x, mu, s = (x + 1e3, mu, s) if case == "large |x|" else (x, mu + 4, s * 5)
    errors = _layer_errors(OPS, x.cpu(), gamma.cpu(), beta.cpu(), mu.cpu(), s.cpu(), 2, device=device)
    bad = {name: e for name, e in errors.items() if e[0] > 8 * max(e[1], 2.0**-23)}
    assert not bad, bad


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _layer(c, groups, device, triton=True):
    torch.manual_seed(0)
    layer = GroupNormProxyAct2d(c, num_groups=groups).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    layer.pn.triton_kernel, layer.pn.cpu_kernel = triton, False  # no C++ build needed for the CPU cases
    return layer


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_layer_with_the_flag_runs_the_kernel_and_matches_the_reference(device, layout):
    """`GroupNormProxyAct2d` with `pn.triton_kernel`: the op forward and backward, in training and inference, and
    the same output and gradients (x and PN's four parameters, through mu and s) as the op-by-op reference."""
    layer = _layer(8, 2, device)
    reference = _layer(8, 2, device, triton=False)
    reference.fused = False
    x = torch.randn(2, 8, 5, 6, device=device).contiguous(memory_format=layout)
    results = []
    for model, record in ((layer, True), (reference, False)):
        xi = x.clone(memory_format=layout).requires_grad_(True)
        with _OpNames() as names:
            y = model(xi)
            grads = torch.autograd.grad(y.square().sum(), [xi, *model.parameters()])
        assert ("g16net_pn_triton.forward.default" in names.names) == record
        assert ("g16net_pn_triton.backward.default" in names.names) == record
        results.append((y, grads))
    (y, grads), (y_ref, grads_ref) = results
    assert y.stride() == x.stride() and torch.allclose(y, y_ref, atol=1e-5)
    assert all(_close(a, b.double(), 1e-4) for a, b in zip(grads, grads_ref))
    with torch.no_grad(), _OpNames() as names:
        assert torch.allclose(layer(x), y_ref, atol=1e-5)
    assert "g16net_pn_triton.forward.default" in names.names


def test_compile_fullgraph_calls_the_op_and_traces_its_backward(device):
    """torch.compile with fullgraph (a graph break raises): the graph calls the op; aot_eager also traces the
    backward through the ops' fake shapes. Inductor on CPU would compile C++ for the rest (~15 s): not needed."""
    layer = _layer(8, 2, device)
    x = torch.randn(2, 8, 5, 6, device=device).contiguous(memory_format=torch.channels_last)
    y_eager = layer(x)
    g_eager = torch.autograd.grad(y_eager.sum(), list(layer.parameters()))
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    for backend in (record, "aot_eager"):
        torch._dynamo.reset()
        y = torch.compile(layer, backend=backend, fullgraph=True)(x)
        g = torch.autograd.grad(y.sum(), list(layer.parameters()))
        assert torch.allclose(y, y_eager, atol=1e-5) and all(torch.allclose(a, b, atol=1e-5)
                                                              for a, b in zip(g, g_eager))
    assert len(graphs) == 1 and "g16net_pn_triton.forward" in graphs[0]
    torch._dynamo.reset()


def test_opcheck_of_both_ops(device):
    """torch.library's own checks: schema, fake tensors against the real outputs, the autograd registration."""
    x, params = _inputs((2, 4, 3, 3), torch.channels_last, device)
    x.requires_grad_(True)
    for p in params:
        p.requires_grad_(True)
    torch.library.opcheck(OPS.forward, (x, *params, 2, 1e-3))
    out, mean, rstd = OPS.forward(x, *params, 2, 1e-3)
    args = (torch.randn_like(out), x.detach(), *(p.detach() for p in params), mean.detach(), rstd.detach(), 2)
    for need_dx in (True, False):
        torch.library.opcheck(OPS.backward, (*args, need_dx), test_utils=("test_schema", "test_faketensor"))


def test_opt_in_by_environment_and_bench_impl(monkeypatch):
    """Off by default; G16NET_TRITON_KERNEL=1 turns it on for new layers; `bench --pn-impl triton` sets it on every
    layer and off for the others."""
    import g16net
    from g16net.efficiency.bench import PN_IMPLS, set_pn_impl

    monkeypatch.delenv("G16NET_TRITON_KERNEL", raising=False)
    assert not ProxyNormAct2d(4).triton_kernel
    monkeypatch.setenv("G16NET_TRITON_KERNEL", "1")
    assert ProxyNormAct2d(4).triton_kernel
    monkeypatch.delenv("G16NET_TRITON_KERNEL")
    assert "triton" in PN_IMPLS
    model = g16net.create_model(norm="ln_pn", num_classes=5)
    layers = [m for m in model.modules() if isinstance(m, ProxyNormAct2d)]
    set_pn_impl(model, "triton")
    assert layers and all(m.triton_kernel and m.cpu_kernel for m in layers)
    set_pn_impl(model, "fused")
    assert not any(m.triton_kernel for m in layers)


def test_bench_refuses_triton_rows_that_would_run_another_path(monkeypatch, capsys):
    from g16net.bench import parse_args

    monkeypatch.setattr(triton_kernel, "INTERPRET", False)
    with pytest.raises(SystemExit) as stop:
        parse_args(["--pn-impl", "fused,triton", "--device", "cpu"])
    assert stop.value.code == 2 and "--pn-impl triton needs triton and a GPU" in capsys.readouterr().err


def test_layer_without_a_gpu_or_interpreter_keeps_its_other_paths(monkeypatch):
    """The flag alone changes nothing on CPU without the interpreter, nor in fx-traced or exported graphs."""
    from g16net.models.proxy_norm import _triton_allowed

    monkeypatch.setattr(triton_kernel, "INTERPRET", False)
    assert not _triton_allowed(torch.zeros(1, 2, 3, 3))
    monkeypatch.setattr(triton_kernel, "INTERPRET", True)
    graph = torch.fx.symbolic_trace(lambda x: x * 2 if _triton_allowed(x) else x)  # no branch on the proxy
    assert "mul" not in str(graph.graph)


@pytest.mark.skipif(INTERPRETED, reason="this process is the interpreter run")
@pytest.mark.skipif(triton_kernel.triton is None, reason="triton is not installed")
def test_cpu_interpreter_cases():
    """This file's "cpu-interp" cases in a child pytest with TRITON_INTERPRET=1 (see the module docstring)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-k", "cpu-interp", "-p", "no:cacheprovider",
         "-o", "addopts=", "--durations=0"],  # one process: no xdist workers of its own
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"})
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
