"""Proxy Normalization (Labatie et al., arXiv 2106.03743), as in the authors' `proxy_norm.py`.

A batch-independent norm (LN/GN, no affine) leaves each channel's post-activation statistics drifting away from
(0, 1), which is what BatchNorm after the activation would otherwise fix. Proxy Norm corrects it with statistics
of a *proxy*: a Gaussian N(beta~, (1 + gamma~)^2) pushed through the same affine + activation. The proxy is
represented by n fixed Gaussian quantiles, so the correction depends on parameters only: no batch dependence, no
running state, identical in train and eval.
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_quantiles(n: int) -> torch.Tensor:
    """u_i = sqrt(2) * erfinv(2 (i + 0.5) / n - 1): n deterministic points of N(0, 1) (midpoint quadrature)."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)).float()


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class ProxyNormAct2d(nn.Module):
    """`(act(gamma * x + beta) - mu) * s` per channel, where x is the already LN/GN-normalized (N, C, H, W) input.

    mu, s are the mean and 1 / sqrt(var + eps) of act(gamma * y + beta) over the proxy y = (1 + gamma~) u + beta~.
    They are recomputed in fp32 from the parameters in every forward (O(C * n), negligible next to a conv), so
    gradients flow through them into all four parameters exactly as in the authors' hand-written backward.
    Parameter names: `weight`/`bias` = gamma/beta (no weight decay, like any norm affine);
    `proxy_weight`/`proxy_bias` = gamma~/beta~ (weight decay applies, as in the paper).
    """

    def __init__(self, num_features: int, eps: float = 0.03, n_points: int = 200, act_layer=nn.SiLU):
        super().__init__()
        if num_features < 1 or n_points < 2:
            raise ValueError(f"ProxyNormAct2d needs num_features >= 1 and n_points >= 2, got {num_features}, "
                             f"{n_points}")
        self.num_features, self.eps, self.n_points = num_features, eps, n_points
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.proxy_weight = nn.Parameter(torch.zeros(num_features))
        self.proxy_bias = nn.Parameter(torch.zeros(num_features))
        self.act = act_layer()
        # A constant, not state: kept out of the state_dict so checkpoints carry only the four parameters.
        self.register_buffer("quantiles", gaussian_quantiles(n_points), persistent=False)
        self._memo = None

    def proxy_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, s), each of shape (C,), in fp32 (or fp64 for fp64 parameters) whatever autocast says.

        Written with fused ops (addcmul, var_mean): it runs once per PN layer per step, forward and backward, so
        its op count, not its arithmetic, is what it costs at small resolutions.
        """
        params = tuple(self.parameters())
        # Without autograd the result is a pure function of the parameters: reuse it while they are the same
        # tensors, unmodified (in-place updates bump `_version`). A memo, not state: nothing is learned or saved.
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if not torch.is_grad_enabled() and self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        dtype = _at_least_fp32(self.weight.dtype)
        device = self.quantiles.device.type
        with torch.autocast(device, enabled=False) if device != "meta" else nullcontext():
            gamma, beta, pgamma, pbeta = (p.to(dtype)[:, None] for p in params)
            proxy = torch.addcmul(pbeta, 1.0 + pgamma, self.quantiles.to(dtype))
            var, mu = torch.var_mean(self.act(torch.addcmul(beta, gamma, proxy)), dim=1, correction=0)
            stats = mu, torch.rsqrt(var + self.eps)  # population variance, as in the authors' code
        self._memo = None if torch.is_grad_enabled() else (key, stats)
        return stats

    def normalize_activated(self, y: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """(y - mu) * s = y * s - mu * s on an already activated tensor, in (at least) fp32.

        The per-channel multiply-add runs through the eval-mode batch-norm kernel (zero mean, unit variance, eps 0,
        weight s, bias -mu s): one pass forward, and one fused pass backward for the input, s and the shift
        (an `addcmul` needs three). Measured in `python -m g16net.bench --pn-impl fused,reference`.
        """
        mu, s = self.proxy_stats()
        y = y.to(_at_least_fp32(y.dtype))
        s = s.to(y.dtype)
        out = F.batch_norm(y, s.new_zeros(s.shape), s.new_ones(s.shape), s, -mu.to(y.dtype) * s, False, 0.0, 0.0)
        return out.to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The spec's formula op by op: the readable reference (GroupNormProxyAct2d runs the fused form)."""
        mu, s = self.proxy_stats()
        x32 = x.to(_at_least_fp32(x.dtype))
        y = self.act(x32 * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1))
        return ((y - mu.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, n_points={self.n_points}"


class GroupNormProxyAct2d(nn.Module):
    """LN/GN (no affine) followed by Proxy Norm, or, with `apply_act=False`, LN/GN with a scale only.

    The scale-only form is what the authors put after the project 1x1 conv (no activation follows, and a shift
    would be redundant with the next block's norm). `fused=True` (default): PN's affine goes into `F.group_norm`
    (normalize + affine in one kernel) and the proxy correction into one batch-norm-kernel pass (see
    `ProxyNormAct2d.normalize_activated`). `fused=False`: group_norm without affine, then `ProxyNormAct2d`, the
    spec's formula op by op; the same function, kept as the readable reference.
    """

    def __init__(
        self, num_features: int, num_groups: int = 1, eps: float = 1e-3, apply_act: bool = True,
        act_layer=nn.SiLU, pn_eps: float = 0.03, n_points: int = 200, fused: bool = True, **_ignored,
    ):
        super().__init__()
        if num_features % num_groups:
            raise ValueError(f"GroupNorm needs channels divisible by num_groups: {num_features} % {num_groups} != 0")
        self.num_groups, self.eps, self.fused = num_groups, eps, fused
        if apply_act:
            self.pn = ProxyNormAct2d(num_features, eps=pn_eps, n_points=n_points, act_layer=act_layer)
            self.weight = None
        else:
            self.pn = None
            self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pn is None:
            return F.group_norm(x, self.num_groups, self.weight, None, self.eps)
        if not self.fused:
            return self.pn(F.group_norm(x, self.num_groups, None, None, self.eps))
        y = F.group_norm(x, self.num_groups, self.pn.weight, self.pn.bias, self.eps)
        return self.pn.normalize_activated(self.pn.act(y), x.dtype)
