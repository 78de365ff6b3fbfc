"""The compiled CPU kernel of LN/GN + Proxy Norm + SiLU (g16net/models/csrc): built where it can be, equal to the
ATen ops it replaces, NaN-transparent, and replaced by those ops (with a warning) where it cannot be built."""

import json
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import is_ninja_available

from g16net.models import cpu_kernel


@pytest.fixture
def ops():
    kernel = cpu_kernel.ops()
    if kernel is None:
        pytest.skip("the kernel could not be built here (see test_kernel_is_built_where_a_compiler_exists)")
    return kernel


def _per_channel(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.3
    mu, s = torch.rand(c, generator=g) * 0.3, torch.rand(c, generator=g) + 0.8
    return gamma, beta, mu, s


def _aten_forward(x, gamma, beta, mu, s, groups, eps):
    return (F.silu(F.group_norm(x, groups, gamma, beta, eps)) - mu.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)


@pytest.mark.skipif(shutil.which("c++") is None or not is_ninja_available(), reason="no C++ compiler or ninja here")
def test_kernel_is_built_where_a_compiler_exists():
    assert cpu_kernel.ops() is not None


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("shape", [(3, 8, 4, 4), (2, 16, 7, 9), (1, 4, 32, 32)])
def test_forward_matches_group_norm_silu_affine(ops, groups, shape):
    x = torch.randn(*shape) * 3 + 1
    gamma, beta, mu, s = _per_channel(shape[1])
    out, mean, rstd = ops.forward(x, gamma, beta, mu, s, groups, 1e-3)
    assert torch.allclose(out, _aten_forward(x, gamma, beta, mu, s, groups, 1e-3), atol=2e-6, rtol=1e-5)
    _, mean_ref, rstd_ref = torch.ops.aten.native_group_norm(x, None, None, shape[0], shape[1], shape[2] * shape[3],
                                                             groups, 1e-3)
    assert torch.allclose(mean, mean_ref, atol=1e-6) and torch.allclose(rstd, rstd_ref, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.01, 1.0, 30.0, 1e4])  # pre-activations from tiny to far past exp's range
def test_exp_approximation_holds_over_the_whole_float_range(ops, gamma):
    """SiLU through the kernel's own exp against fp64 torch: the pre-activation gamma * x^ spans +-1.7 gamma
    (atol: the rounding of the pre-activation itself, a few fp32 ulps of gamma)."""
    x = torch.linspace(-3, 3, 4001).view(1, 1, 1, -1)
    g, b, mu, s = torch.tensor([gamma]), torch.zeros(1), torch.zeros(1), torch.ones(1)
    out, _, _ = ops.forward(x, g, b, mu, s, 1, 1e-3)
    ref = _aten_forward(*(t.double() for t in (x, g, b, mu, s)), 1, 1e-3)
    assert torch.allclose(out.double(), ref, atol=1e-6 * gamma, rtol=2e-6)


def test_nan_input_stays_nan_in_its_own_sample(ops):
    """A NaN must reach the loss (the run-safety guard stops on it) and must not leak into other samples."""
    x = torch.randn(3, 8, 4, 4)
    x[1, 2, 0, 0] = float("nan")
    gamma, beta, mu, s = _per_channel(8)
    out, _, _ = ops.forward(x, gamma, beta, mu, s, 1, 1e-3)
    assert out[1].isnan().all() and out[[0, 2]].isfinite().all()
    x = x.requires_grad_(True)
    dx, sums = ops.backward(torch.ones_like(x), x.detach(), gamma, beta, *ops.forward(x.detach(), gamma, beta, mu, s,
                                                                                      1, 1e-3)[1:], mu, s, 1, True)
    assert dx[1].isnan().all() and dx[[0, 2]].isfinite().all()


def test_bad_inputs_are_refused_with_a_reason(ops):
    gamma, beta, mu, s = _per_channel(8)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.forward(torch.randn(2, 8, 4, 4).transpose(2, 3), gamma, beta, mu, s, 1, 1e-3)
    with pytest.raises(RuntimeError, match="not divisible by groups"):
        ops.forward(torch.randn(2, 8, 4, 4), gamma, beta, mu, s, 3, 1e-3)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.forward(torch.randn(2, 8, 4, 4).double(), gamma, beta, mu, s, 1, 1e-3)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as ext

    def no_compiler(*args, **kwargs):
        raise RuntimeError("compiler not found")

    monkeypatch.setattr(ext, "load", no_compiler)
    cpu_kernel.ops.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built.*compiler not found.*G16NET_CPU_KERNEL=0"):
            assert cpu_kernel.ops() is None
        assert cpu_kernel.ops() is None  # cached: no second attempt, no second warning
    finally:
        cpu_kernel.ops.cache_clear()


def test_switched_off_by_environment_and_same_results():
    """G16NET_CPU_KERNEL=0 gives the ATen path, silently; a layer's output and gradients agree with the kernel's."""
    code = (
        "import warnings, torch; warnings.simplefilter('error')\n"
        "from g16net.models import GroupNormProxyAct2d, cpu_kernel\n"
        "print(cpu_kernel.ops() is None)\n"
        "torch.manual_seed(0); layer = GroupNormProxyAct2d(8, num_groups=4)\n"
        "with torch.no_grad(): [p.add_(torch.randn_like(p) * 0.3) for p in layer.parameters()]\n"
        "x = torch.randn(2, 8, 8, 8, requires_grad=True); y = layer(x); y.pow(2).sum().backward()\n"
        "out = [y.detach().flatten()[:8], x.grad.flatten()[:8], layer.pn.weight.grad]\n"
        "print(repr([t.tolist() for t in out]))\n"
    )
    runs = {}
    for flag in ("0", "1"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "G16NET_CPU_KERNEL": flag})
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        runs[flag] = (lines[0] == "True", eval(lines[1]))
    assert runs["0"][0] is True
    if runs["1"][0]:
        pytest.skip("the kernel could not be built here")
    for a, b in zip(runs["0"][1], runs["1"][1]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-4)


def test_bench_aten_impl_switches_the_kernel_off_with_the_same_model(ops):
    """`--pn-impl aten` (the A/B of the kernel) measures the same function: same logits and gradients."""
    import g16net
    from g16net.efficiency.bench import set_pn_impl
    from g16net.models import ProxyNormAct2d

    torch.manual_seed(0)
    fused = g16net.create_model(norm="ln_pn", num_classes=5)
    aten = set_pn_impl(g16net.create_model(norm="ln_pn", num_classes=5), "aten")
    aten.load_state_dict(fused.state_dict())
    assert all(not m.cpu_kernel for m in aten.modules() if isinstance(m, ProxyNormAct2d))
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (fused, aten):
        model.eval()  # no dropout / drop path: the two models see the same function
        y = model(x)
        grads.append((y, torch.autograd.grad(y.square().sum(), list(model.parameters()))))
    (y_f, g_f), (y_a, g_a) = grads
    assert torch.allclose(y_f, y_a, atol=1e-4, rtol=1e-4)
    # fp32 rounding differs between the kernel and ATen's ops; through 16 blocks it reaches ~6e-5 of a gradient's
    # scale (measured), so compare against each tensor's largest entry.
    assert all((a - b).abs().max() <= 3e-4 * b.abs().max() + 1e-7 for a, b in zip(g_f, g_a))


def test_proxy_moments_in_fp32_match_fp64_and_their_backward_sums(ops):
    """The kernel's proxy statistics (its own exp, sums over 200 points) against fp64 ATen, as for a B0, and
    including proxies of small spread against their mean (large s), where a one-pass fp32 variance loses digits."""
    from g16net.models.proxy_norm import _ProxySiLUMoments, gaussian_quantiles

    torch.manual_seed(0)
    a = torch.cat([torch.randn(300) * 0.5 + 1.0, torch.rand(100) * 0.05])  # (1 + gamma~) gamma
    b = torch.cat([torch.randn(300) * 0.5, torch.randn(100) * 4])  # gamma beta~ + beta
    u = gaussian_quantiles(200)
    mu, s, sums = ops.proxy_moments(a, b, u, 0.03, True)
    y = a.double()[:, None] * u.double() + b.double()[:, None]
    z, sig = F.silu(y), torch.sigmoid(y)
    d = sig * (1 + y * (1 - sig))
    mu_ref = z.mean(1)
    s_ref = (z.var(1, unbiased=False) + 0.03).rsqrt()
    assert s_ref.max() > 5  # the large-s rows are there
    ud, zc = u.double(), z - mu_ref[:, None]
    against_u = torch.stack([(d * ud).sum(1), (zc * d * ud).sum(1)])  # the backward's sums are centred on mu
    against_1 = torch.stack([d.sum(1), (zc * d).sum(1)])
    sums_ref = torch.stack([against_u, against_1])
    # ATen's fp32 mean and two-pass variance reach 1.2e-7 relative error on these rows: the kernel within 2x
    assert torch.allclose(mu.double(), mu_ref, rtol=2.5e-7, atol=2.5e-7)
    assert torch.allclose(s.double(), s_ref, rtol=2.5e-7)
    assert torch.allclose(sums.double(), sums_ref, rtol=1e-5, atol=1e-5)
    # the op's registered backward (the closed form, from these sums) against the ATen path's autograd.Function
    x = [(t.clone().requires_grad_(True), t.clone().requires_grad_(True)) for t in (a, b)]
    w = torch.randn(2, len(a))
    g_kernel = torch.autograd.grad((w[0] * ops.proxy_moments(x[0][0], x[1][0], u, 0.03, True)[0]
                                    + w[1] * ops.proxy_moments(x[0][0], x[1][0], u, 0.03, True)[1]).sum(),
                                   (x[0][0], x[1][0]))
    mu_a, s_a = _ProxySiLUMoments.apply(x[0][1], x[1][1], u, 0.03)
    g_aten = torch.autograd.grad((w[0] * mu_a + w[1] * s_a).sum(), (x[0][1], x[1][1]))
    assert all(torch.allclose(k, r, rtol=1e-4, atol=1e-5) for k, r in zip(g_kernel, g_aten))


def test_compiled_graphs_call_the_kernel_and_exported_ones_do_not(ops):
    """torch.compile (fullgraph: no graph break) runs the kernel's ops; torch.export keeps plain ops, so an
    exported model runs where the extension is not built."""
    import g16net

    torch.manual_seed(0)
    model = g16net.create_model(norm="ln_pn", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=record, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    assert "g16net_pn.forward" in graphs[0] and "g16net_pn.proxy_moments" in graphs[0]
    with torch.no_grad():
        assert torch.allclose(y, model(x), atol=1e-5)
        exported = torch.export.export(model, (x,))
    assert "g16net_pn" not in str(exported.graph)
    torch._dynamo.reset()


_ISAS = ("default", "avx2", "avx512")  # torch's CPU capabilities on x86, lowest first


@lru_cache(maxsize=1)
def _runnable_isas() -> list[str]:
    """The capabilities this CPU can run: DEFAULT everywhere, then x86's up to the one torch picks by itself."""
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in __import__("os").environ.items() if k != "ATEN_CPU_CAPABILITY"})
    native = native.stdout.strip().lower()
    return list(_ISAS[: _ISAS.index(native) + 1]) if native in _ISAS else ["default"]


@pytest.mark.skipif(shutil.which("c++") is None or not is_ninja_available(), reason="no C++ compiler or ninja here")
@pytest.mark.parametrize("isa", _ISAS)
def test_kernel_is_exact_under_every_instruction_set(isa):
    """Built for the instruction set torch dispatches to (forced with ATEN_CPU_CAPABILITY), the kernel's layer
    forward, its five gradients, the proxy moments and their gradients are within 8x ATen fp32's error against
    fp64, or 8 fp32 ulps where ATen's is smaller: both round each element once or twice, but sum in a different
    order (8 or 16 lanes, or plane by plane, against ATen's cascade), and the kernel uses its own ~1-ulp exp.
    The inputs include |x| far above its spread and proxies of small variance (large s), where an fp32 one-pass
    variance or an uncentred sum of g (z - mu) lose 2-4 digits (measured: 1e-3 relative error in s on AVX2)."""
    if isa not in _runnable_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("kernel_exactness.py"))], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "ATEN_CPU_CAPABILITY": isa})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["capability"] == isa.upper() and report["built"], report
    ulp = 2.0**-23
    bad = {f"{case}: {name}": errs for case, quantities in report["cases"].items()
           for name, errs in quantities.items() if errs[0] > 8 * max(errs[1], ulp)}
    assert not bad, f"kernel error / ATen fp32 error against fp64 under {isa}: {bad}"
    assert len(report["cases"]) >= 12
