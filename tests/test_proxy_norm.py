"""Proxy Norm against the checkable properties of spec section 2 (values from the authors' formulation)."""

import pytest
import torch
from torch import nn

from g16net.models import GroupNormProxyAct2d, ProxyNormAct2d, gaussian_quantiles


def _set(pn: ProxyNormAct2d, beta: float, gamma: float, pbeta: float, pgamma: float) -> ProxyNormAct2d:
    with torch.no_grad():
        pn.bias.fill_(beta)
        pn.weight.fill_(gamma)
        pn.proxy_bias.fill_(pbeta)
        pn.proxy_weight.fill_(pgamma)
    return pn


def _as_channels(values: torch.Tensor, channels: int) -> torch.Tensor:
    """The same n values in every channel, shaped (1, C, n, 1)."""
    return values.view(1, 1, -1, 1).expand(1, channels, -1, 1).contiguous()


def _channel_stats(y: torch.Tensor):
    return y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)


def test_quantiles_are_the_fixed_midpoint_gaussian_points():
    u = gaussian_quantiles(200)
    assert u.shape == (200,)
    assert torch.allclose(u, -u.flip(0), atol=1e-6)  # symmetric
    assert u[100].item() == pytest.approx(0.0062666, abs=1e-6)  # sqrt(2) erfinv(2 * 100.5/200 - 1)
    assert torch.equal(u, gaussian_quantiles(200))  # deterministic, not random


@pytest.mark.parametrize("act, expected_var", [(nn.SiLU, 0.911766), (nn.ReLU, 0.918486)])
def test_quadrature_input_gives_zero_mean_and_var_over_var_plus_eps(act, expected_var):
    pn = ProxyNormAct2d(3, act_layer=act)
    mean, var = _channel_stats(pn(_as_channels(gaussian_quantiles(200), 3)))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-6)
    assert torch.allclose(var, torch.full((3,), expected_var), atol=2e-6)


def test_general_parameters_proxy_input():
    pn = _set(ProxyNormAct2d(2), beta=0.5, gamma=1.5, pbeta=0.2, pgamma=-0.3)
    mu, s = pn.proxy_stats()
    var = 1.0 / s.square() - pn.eps
    assert mu[0].item() == pytest.approx(0.730250, abs=2e-6)
    assert var[0].item() == pytest.approx(0.687386, abs=2e-6)
    proxy = (1 - 0.3) * gaussian_quantiles(200) + 0.2
    mean, out_var = _channel_stats(pn(_as_channels(proxy, 2)))
    assert torch.allclose(mean, torch.zeros(2), atol=1e-6)
    assert torch.allclose(out_var, var / (var + 0.03), atol=2e-6)


def test_init_constants():
    mu, s = ProxyNormAct2d(4).proxy_stats()
    assert torch.allclose(mu, torch.full((4,), 0.206048), atol=1e-6)
    assert torch.allclose(s, torch.full((4,), 1.714977), atol=1e-5)


def test_standard_gaussian_input_moments():
    # Exact expectation under N(0, 1) by a dense midpoint quadrature (no sampling noise).
    pn = ProxyNormAct2d(1).double()
    y = pn(gaussian_quantiles(1_000_000).double().view(1, 1, -1, 1))
    assert y.mean().item() == pytest.approx(0.00098, abs=1e-5)
    assert y.var(unbiased=False).item() == pytest.approx(0.92082, abs=1e-5)


def test_gradients_match_finite_differences():
    pn = _set(ProxyNormAct2d(3, n_points=16), 0.1, 1.2, -0.1, 0.2).double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in pn.named_parameters()]
    assert names == ["weight", "bias", "proxy_weight", "proxy_bias"]

    def f(x, *params):
        return torch.func.functional_call(pn, dict(zip(names, params)), (x,))

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in pn.parameters()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_no_running_state_and_train_equals_eval():
    pn = ProxyNormAct2d(5)
    assert set(pn.state_dict()) == {"weight", "bias", "proxy_weight", "proxy_bias"}
    x = torch.randn(4, 5, 3, 3)
    pn.train()
    y_train = pn(x)
    pn(torch.randn(4, 5, 3, 3) * 10)  # any batch statistics would move here
    pn.eval()
    assert torch.equal(pn(x), y_train)


def test_fused_layer_equals_reference_formulation():
    torch.manual_seed(0)
    layer = GroupNormProxyAct2d(8, num_groups=4)
    _set(layer.pn, 0.3, 0.7, -0.2, 0.4)
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    outs, grads = [], []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for g_fused, g_ref in zip(*grads):
        assert torch.allclose(g_fused, g_ref, atol=1e-4)


def test_scale_only_form_has_no_shift_and_no_pn():
    layer = GroupNormProxyAct2d(6, num_groups=1, apply_act=False)
    assert layer.pn is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 6, 4, 4)
    ref = nn.functional.group_norm(x, 1, eps=1e-3) * torch.arange(1.0, 7.0).view(1, -1, 1, 1)
    assert torch.allclose(layer(x), ref, atol=1e-6)


def test_bf16_autocast_keeps_statistics_in_fp32():
    layer = GroupNormProxyAct2d(4)
    x = torch.randn(2, 4, 3, 3)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
        mu, s = layer.pn.proxy_stats()
    assert mu.dtype == s.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref, atol=5e-2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_features"):
        ProxyNormAct2d(0)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        GroupNormProxyAct2d(6, num_groups=4)


def test_inference_reuses_statistics_until_a_parameter_changes():
    pn = ProxyNormAct2d(3)
    with torch.no_grad():
        first = pn.proxy_stats()
        assert pn.proxy_stats()[0] is first[0]  # reused
        pn.proxy_bias.add_(0.5)  # what an optimizer step does
        moved = pn.proxy_stats()
    assert moved[0] is not first[0] and not torch.allclose(moved[0], first[0])
    assert torch.equal(moved[0], pn.proxy_stats()[0].detach())  # grad mode recomputes, same values
    assert pn.proxy_stats()[0].requires_grad  # and keeps the graph for the parameters' gradients
