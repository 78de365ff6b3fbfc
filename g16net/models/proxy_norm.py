"""Proxy Normalization (Labatie et al., arXiv 2106.03743), as in the authors' `proxy_norm.py`.

A batch-independent norm (LN/GN, no affine) leaves each channel's post-activation statistics drifting away from
(0, 1), which is what BatchNorm after the activation would otherwise fix. Proxy Norm corrects it with statistics
of a *proxy*: a Gaussian N(beta~, (1 + gamma~)^2) pushed through the same affine + activation. The proxy is
represented by n fixed Gaussian quantiles, so the correction depends on parameters only: no batch dependence, no
running state, identical in train and eval.
"""

import math
import os
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernel, triton_kernel


def gaussian_quantiles(n: int) -> torch.Tensor:
    """u_i = sqrt(2) * erfinv(2 (i + 0.5) / n - 1): n deterministic points of N(0, 1) (midpoint quadrature)."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)).float()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs: the statistics and the proxy subtraction never run in half precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tracing() -> bool:
    """True under torch.compile, torch.export or jit.trace: Python-side state (the memo, autograd.Function
    bookkeeping) must not leak into a captured graph, which gets the plain-op formulation instead."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _no_autocast(device: str):
    """Autocast off, entered only when it is on: the context manager costs more than the tiny ops it guards."""
    return torch.autocast(device, enabled=False) if device != "meta" and torch.is_autocast_enabled(device) \
        else nullcontext()


@lru_cache(maxsize=256)
def _bn_constants(c: int, dtype: torch.dtype, device: torch.device):
    """Zeros and ones of length c and two empty outputs for the batch-norm kernel's bookkeeping, made once per
    (size, dtype, device): allocating them per call was a visible share of the per-layer overhead. Never written
    (eval-mode batch norm leaves its statistics alone); normal tensors even when first asked for in inference
    mode, so autograd-mode calls can use them too."""
    with torch.inference_mode(False):
        kw = dict(dtype=dtype, device=device)
        return torch.zeros(c, **kw), torch.ones(c, **kw), torch.empty(0, **kw), torch.empty(0, **kw)


def _proxy_preactivation(gamma, beta, proxy_gamma, proxy_beta, quantiles) -> torch.Tensor:
    """(C, n): gamma * y + beta over the proxy y = (1 + gamma~) u + beta~, in fp32 (fp64 for fp64 parameters)."""
    dtype = _compute_dtype(gamma.dtype)
    proxy = torch.addcmul(proxy_beta.to(dtype)[:, None], 1.0 + proxy_gamma.to(dtype)[:, None], quantiles.to(dtype))
    return torch.addcmul(beta.to(dtype)[:, None], gamma.to(dtype)[:, None], proxy)


def _moments(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and 1 / sqrt(population variance + eps), as in the authors' code.

    Two means of z shifted by its value at the median point (a one-pass variance, which var_mean's Welford loop
    is ~10x slower than on CPU): unshifted, E z^2 - mu^2 cancels two terms of size mu^2 and loses fp32 digits
    exactly where s is large (a small spread against the mean); the shift sits inside the range of z, so
    |E z - shift| is of the order of the spread and nothing cancels.
    """
    shift = z[:, z.shape[1] // 2]
    zk = z - shift[:, None]
    off = zk.mean(dim=1)
    return shift + off, torch.rsqrt((zk * zk).mean(dim=1) - off * off + eps)


def proxy_moments_grad(gmu, gs, s, sums, n: int):
    """d(mu, s)/d(a, b) of `_ProxySiLUMoments`, closed form, from the forward's sums (2, 2, C): against u and
    against 1, of d = silu'(a u + b) and of (z - mu) d. With var = E (z - mu)^2, dmu = E[d u] da + E[d] db and
    ds = -s^3 dvar / 2 = -s^3 (E[(z - mu) d u] da + E[(z - mu) d] db); the centred sums keep it free of the
    mu * sum(d) cancellation. Shared by the ATen path and the CPU kernel's registered derivative."""
    gmu = torch.zeros_like(s) if gmu is None else gmu
    gs = torch.zeros_like(s) if gs is None else gs
    p, q = gmu / n, -gs * s.pow(3) / n
    (sdu, szdu), (sd, szd) = sums.unbind(0)
    return p * sdu + q * szdu, p * sd + q * szd


def _proxy_moments(gamma, beta, proxy_gamma, proxy_beta, quantiles, act: nn.Module, eps: float,
                   kernel: bool = False):
    """Spec section 2 on (C,) parameters: mu_c, s_c of act(gamma (1 + gamma~) u + gamma beta~ + beta). Eager, or
    compiled with `kernel` (the CPU kernel's op, for SiLU: see `_kernel_allowed`)."""
    if isinstance(act, nn.SiLU):
        dtype = _compute_dtype(gamma.dtype)
        gamma, beta, proxy_gamma, proxy_beta = (t.to(dtype) for t in (gamma, beta, proxy_gamma, proxy_beta))
        a, b = gamma * (1.0 + proxy_gamma), torch.addcmul(beta, gamma, proxy_beta)
        if kernel:  # the same sums in one vectorized pass per channel: 2 ms against 7-22 ms for a B0 (CPU)
            sums = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
            mu, s, _ = torch.ops.g16net_pn.proxy_moments(a.contiguous(), b.contiguous(), quantiles.to(dtype), eps,
                                                         sums)
            return mu, s
        return _ProxySiLUMoments.apply(a, b, quantiles.to(dtype), eps)
    return _moments(act(_proxy_preactivation(gamma, beta, proxy_gamma, proxy_beta, quantiles)), eps)


_CHUNK_POINTS = 65536  # proxy points per chunk on CPU: 256 KB per fp32 temporary


class _ProxySiLUMoments(torch.autograd.Function):
    """(mu, s) of silu(a u + b) over the quantiles u, per channel, with a closed-form backward.

    The proxy is C x n (13k x 200 for all of a B0's layers at once): as large as an activation at 64 px. Autograd
    would make ~16 passes over it and a recomputing backward ~8, each with fresh C x n temporaries (page faults on
    CPU). Instead the forward, when gradients are wanted, also takes the four sums the backward needs
    (`proxy_moments_grad`), so the backward is O(C). z is shifted by k = silu(b), its value at the median point,
    before anything is summed (see `_moments`), and the sums of z d are centred on mu. Every sum over the n
    points is one (2, n) @ (n, rows) matmul against [u; 1], measured faster on CPU than sum() or mv(). On CPU
    rows go in chunks of `_CHUNK_POINTS` points, so the temporaries stay in cache and the allocator reuses them
    (one fresh C x n buffer per step costs ~1 page fault per 4 KB, which at this size is as slow as the
    arithmetic); on a GPU all rows go at once (a dozen kernels per step, whatever the number of layers).
    """

    @staticmethod
    def forward(ctx, a, b, u, eps: float):
        n, c = u.numel(), len(a)
        grads = any(ctx.needs_input_grad[:2])
        ctx.n = n
        basis = torch.stack([u, torch.ones_like(u)])  # (2, n): sums against u and against 1
        ab = torch.stack([a, b], 1)
        shift = F.silu(b)
        k = 3 if grads else 1  # rows per point: z - shift, then d and (z - shift) d for the backward
        sums, sq = a.new_empty(2, k, c), a.new_empty(c)
        rows = max(1, _CHUNK_POINTS // n) if a.device.type == "cpu" else c
        ones = torch.ones_like(u).expand(min(rows, c), n)  # silu_backward's grad_output: d = silu'(y) itself
        for i in range(0, c, rows):
            j = min(i + rows, c)
            y = ab[i:j] @ basis  # a u + b; a K=2 matmul is 2-4x faster than addr or broadcasting on CPU
            zd = y.new_empty(k, j - i, n)
            zk = torch.ops.aten.silu.out(y, out=zd[0]).sub_(shift[i:j, None])
            if grads:
                torch.ops.aten.silu_backward.grad_input(ones[: j - i], y, grad_input=zd[1])
                torch.mul(zk, zd[1], out=zd[2])
            sums[:, :, i:j] = (basis @ zd.view(-1, n).T).view(2, k, j - i)
            sq[i:j] = torch.linalg.vector_norm(zk, dim=1)
        off = sums[1, 0] / n  # E z - shift
        s = torch.rsqrt(sq.square() / n - off * off + eps)  # population variance E (z - shift)^2 - off^2
        if grads:
            sums[:, 2] -= off * sums[:, 1]  # sum (z - mu) d = sum (z - shift) d - off sum d
            ctx.save_for_backward(s, sums[:, 1:])
        return shift + off, s

    @staticmethod
    def backward(ctx, gmu, gs):
        s, sums = ctx.saved_tensors
        return *proxy_moments_grad(gmu, gs, s, sums, ctx.n), None, None


class ProxyNormAct2d(nn.Module):
    """`(act(gamma * x + beta) - mu) * s` per channel, where x is the already LN/GN-normalized (N, C, H, W) input.

    mu, s are the mean and 1 / sqrt(var + eps) of act(gamma * y + beta) over the proxy y = (1 + gamma~) u + beta~.
    They are recomputed in fp32 from the parameters in every training forward (O(C * n), for all layers at once
    under `batched_proxy_stats`), so gradients flow through them into all four parameters exactly as in the
    authors' hand-written backward. Parameter names: `weight`/`bias` = gamma/beta (no weight decay, like any norm
    affine); `proxy_weight`/`proxy_bias` = gamma~/beta~ (weight decay applies, as in the paper).
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
        self._memo = None  # eager inference: (parameters, their versions, (mu, s))
        self._pending = None  # (mu, s) handed over by `batched_proxy_stats` for the next forward only
        self.cpu_kernel = True  # the compiled CPU kernel where it applies (False: ATen ops, for A/B benchmarks)
        # The Triton kernel on GPUs (`triton_kernel`): opt-in until measured there.
        self.triton_kernel = os.environ.get("G16NET_TRITON_KERNEL", "0") == "1"

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The spec's formula op by op, through autograd: what scripted, traced and compiled graphs run."""
        z = self.act(_proxy_preactivation(self.weight, self.bias, self.proxy_weight, self.proxy_bias, self.quantiles))
        return _moments(z, self.eps)

    def proxy_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, s), each of shape (C,), in fp32 (or fp64 for fp64 parameters) whatever autocast says.

        Without autograd they are constants of the parameters, cached by `constants`.
        """
        if torch.jit.is_scripting():
            return self._stats()
        if tracing():  # compiled graphs may call the CPU kernel's op; exported and traced ones keep plain ops
            return self._compute_stats() if self._kernel() else self._stats()
        if self._pending is not None:
            stats, self._pending = self._pending, None
            return stats
        if not torch.is_grad_enabled():
            return self.constants()[:2]
        self._memo = None
        return self._compute_stats()

    @torch.jit.unused
    def _compute_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        with _no_autocast(self.quantiles.device.type):
            return _proxy_moments(self.weight, self.bias, self.proxy_weight, self.proxy_bias, self.quantiles,
                                  self.act, self.eps, self._kernel())

    @torch.jit.unused
    def _kernel(self) -> bool:
        return isinstance(self.act, nn.SiLU) and _kernel_allowed(self.weight, self.cpu_kernel)

    @torch.jit.unused
    def constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eager inference: (mu, s, -mu s), computed once and reused until a parameter is replaced or updated in
        place (an optimizer step or `load_state_dict` bumps its version counter)."""
        params = (self.weight, self.bias, self.proxy_weight, self.proxy_bias)
        versions = tuple(p._version for p in params)
        memo = self._memo
        # Identity (`is`) on the parameter tensors the memo holds, so no pointer is read and no id can be reused.
        if memo is not None and memo[1] == versions and all(a is b for a, b in zip(memo[0], params)):
            return memo[2]
        with torch.no_grad():
            mu, s = self._compute_stats()
            consts = mu, s, -mu * s
        self._memo = params, versions, consts
        return consts

    def _apply(self, fn, recurse=True):
        self._memo = None  # .to()/.half() swap parameter data without touching their version counters
        return super()._apply(fn, recurse)

    def normalize_activated(self, y: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """(y - mu) * s = y * s + (-mu * s) on an already activated tensor, in (at least) fp32: one pass.

        In eager inference it writes into y, which the caller owns, so the whole layer allocates one tensor.
        """
        y = y.to(_compute_dtype(y.dtype))
        if not torch.jit.is_scripting():
            if not torch.is_grad_enabled() and not tracing():
                _, s, shift = self.constants()
                return _channel_affine_(y, s.to(y.dtype), shift.to(y.dtype)).to(out_dtype)
        mu, s = self.proxy_stats()
        s = s.to(y.dtype)
        shift = -mu.to(y.dtype) * s
        return torch.addcmul(shift.view(1, -1, 1, 1), y, s.view(1, -1, 1, 1)).to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The spec's formula op by op: the readable reference (GroupNormProxyAct2d runs the fast forms)."""
        if not torch.jit.is_scripting():
            if isinstance(x, torch.fx.Proxy):
                return _untraced_layer(self, x)
        mu, s = self.proxy_stats()
        x32 = x.to(_compute_dtype(x.dtype))
        y = self.act(x32 * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1))
        return ((y - mu.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, n_points={self.n_points}"


@torch.fx.wrap
def _untraced_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Proxy Norm layer under torch.fx symbolic tracing: one call_function node that calls the layer itself.

    Its forward picks a kernel by the input's device and reuses statistics cached on the layer, neither of which a
    Proxy can answer or a graph record; so a traced graph runs exactly what eager runs (the CPU kernel included).
    torch.fx.wrap makes every tracer record this call instead of entering it; timm's tracers stop one level higher,
    at the layer (`timm_registry` lists it as a leaf module).
    """
    return layer(x)


# Below this many pixels per plane (2x2 maps: the last stages at 64 px) the norm kernels' per-(sample, channel)
# loops cost 2-4x a broadcasting op on CPU; from 4x4 up they are 2-3x faster than one. Measured per B0 layer shape.
_SMALL_PLANE = 16


def _norm_kernel_wins(t: torch.Tensor) -> bool:
    """Whether to run a per-channel affine or sum through a norm kernel (the CPU trick below) rather than plain
    broadcasting ops. CPU only: the trick was measured there; on a GPU each plain op is one kernel anyway, and
    CUDA's group-norm kernels take NCHW only."""
    return t.device.type == "cpu" and t.numel() >= _SMALL_PLANE * t.shape[0] * t.shape[1]


# From 4x4 maps up the fused CPU kernel beats the ATen ops on AVX2 and AVX-512 builds alike, training and
# inference (a layer's forward + backward on 32 x 672 x 4 x 4: 1.2-1.3 ms against 1.7-1.9 ms; 32 x 96 x 32 x 32:
# 3.8-5.4 against 9.2-9.5). On 2x2 maps its four horizontal reductions per 4-pixel plane make inference 1.1-2.3x
# the ATen path's, so those keep ATen's flat ops (Xeon with AMX, torch 2.14.1, 2 threads, fp32).
_KERNEL_MIN_PLANE = 16


def _kernel_allowed(t: torch.Tensor, flag: bool) -> bool:
    """Whether to run the compiled CPU kernel (`cpu_kernel`) on `t`: a layer's `cpu_kernel` flag, a CPU tensor,
    eager or torch.compile, and the kernel built. Never in exported or jit-traced graphs, which must run without
    the extension (the checks come first: jit.trace names a tensor whose shape is read)."""
    if not flag or torch.compiler.is_exporting() or torch.jit.is_tracing() or t.device.type != "cpu":
        return False
    return cpu_kernel.available()


def _kernel_applies(x: torch.Tensor, flag: bool) -> bool:
    """`_kernel_allowed` on an (N, C, H, W) input with planes of at least `_KERNEL_MIN_PLANE` pixels."""
    return _kernel_allowed(x, flag) and x.numel() >= _KERNEL_MIN_PLANE * x.shape[0] * x.shape[1]


def _triton_allowed(x: torch.Tensor) -> bool:
    """Whether a layer whose `triton_kernel` flag is set runs `triton_kernel` on `x`: a GPU tensor (or any under
    Triton's interpreter), eager or torch.compile, never in exported, jit-traced or fx-traced graphs (checked
    before x's device is read, which fx would record rather than answer)."""
    if torch.compiler.is_exporting() or torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy):
        return False
    return (x.device.type != "cpu" or triton_kernel.INTERPRET) and triton_kernel.available()


def _channel_affine_(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """y[:, c] = y[:, c] * scale[c] + shift[c] in place, through the eval-mode batch-norm kernel (mean 0, var 1,
    eps 0): one vectorized pass, about half the CPU time of a broadcasting addcmul and free of an allocation;
    on planes of fewer than `_SMALL_PLANE` pixels, where that kernel is the slower one, and off the CPU, the
    addcmul into y."""
    if not _norm_kernel_wins(y):
        hw = y.numel() // (y.shape[0] * y.shape[1])
        if y.device.type == "cpu" and hw > 1 and y.is_contiguous():
            # Per channel, repeated H x W times: one flat multiply-add per sample row instead of loops of H x W
            # elements (2.5-3x faster on 2 x 2 planes).
            c, v = y.shape[1], y.view(y.shape[0], -1)
            rows = lambda t: t.view(c, 1).expand(c, hw).reshape(-1)
            torch.addcmul(rows(shift), v, rows(scale), out=v)
            return y
        return torch.addcmul(shift.view(1, -1, 1, 1), y, scale.view(1, -1, 1, 1), out=y)
    zeros, ones, empty, empty2 = _bn_constants(y.shape[1], scale.dtype, scale.device)
    torch.ops.aten.native_batch_norm.out(y, scale, shift, zeros, ones, False, 0.0, 0.0, out=y, save_mean=empty,
                                         save_invstd=empty2)
    return y


@contextmanager
def batched_proxy_stats(model: nn.Module):
    """Within the block, every ProxyNormAct2d of `model` gets (mu, s) computed for all layers at once.

    Per layer the statistics are a handful of tiny ops forward and backward; over the 33 PN layers of a B0 that
    per-op overhead is much of what PN costs at small resolutions. Concatenating the parameters makes it one set
    of ops per step. The values are those of `proxy_stats` (same formula, row by row). Only for eager
    autograd: inference reuses each layer's memo, and compiled/exported graphs fuse the per-layer ops anyway.
    """
    layers = [m for m in model.modules() if isinstance(m, ProxyNormAct2d)]
    if len(layers) < 2 or not torch.is_grad_enabled() or tracing():
        yield
        return
    groups = defaultdict(list)
    for m in layers:
        groups[(type(m.act), m.eps, m.n_points, m.weight.dtype, m.weight.device, m.quantiles.dtype,
                m.cpu_kernel)].append(m)
    try:
        for ms in groups.values():
            with _no_autocast(ms[0].quantiles.device.type):
                params = [torch.cat([getattr(m, n) for m in ms]) for n in
                          ("weight", "bias", "proxy_weight", "proxy_bias")]
                mu, s = _proxy_moments(*params, ms[0].quantiles, ms[0].act, ms[0].eps, ms[0]._kernel())
            sizes = [m.num_features for m in ms]
            for m, mu_m, s_m in zip(ms, mu.split(sizes), s.split(sizes)):
                m._pending = mu_m, s_m
        yield
    finally:
        for m in layers:
            m._pending = None


class _GroupNormProxySiLU(torch.autograd.Function):
    """group_norm(x) -> gamma, beta -> SiLU -> (. - mu) * s, keeping only x and per-group statistics for backward.

    Autograd through the same ops would keep three full tensors per layer (norm input, pre-activation,
    activation); here the pre-activation is recomputed in backward (one pass) and the output, which the next conv
    keeps anyway, gives sum(grad * (z - mu)) = sum(grad * out) / s. Per layer that is what plain LN keeps.
    The forward writes in place into the one tensor it allocates. The same trick as timm's/apex's fused norm+act.
    The ATen path: on CPU, where the compiled kernel does not apply (`_kernel_applies`), planes under
    `_SMALL_PLANE` pixels take `_backward_small_planes`, larger ones ATen's norm kernels.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, mu, s, groups: int, eps: float):
        # NCHW throughout: CUDA's group-norm kernels take nothing else, and torch <= 2.13's CPU kernels give wrong
        # gradients (or crash) when the input and the incoming gradient differ in layout (measured on 2.13 CPU).
        x = x.contiguous()
        n, c = x.shape[:2]
        hw = x.numel() // (n * c)
        dtype = mu.dtype
        with _no_autocast(x.device.type):
            a, mean, rstd = torch.ops.aten.native_group_norm(x.to(dtype), gamma.to(dtype), beta.to(dtype), n, c, hw,
                                                             groups, eps)
            out = _channel_affine_(F.silu(a, inplace=True), s, -mu * s)
        ctx.groups, ctx.hw = groups, hw
        exact = out.dtype == x.dtype  # else the output is rounded: sum(grad * out) would be too, recompute instead
        out = out.to(x.dtype)
        ctx.save_for_backward(x, gamma, beta, mean, rstd, mu, s, out if exact else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, gamma, beta, mean, rstd, mu, s, out = ctx.saved_tensors
        n, c, groups, hw = x.shape[0], x.shape[1], ctx.groups, ctx.hw
        dtype = mu.dtype
        if x.device.type == "cpu" and not _norm_kernel_wins(x):
            with _no_autocast("cpu"):
                dx, dgamma, dbeta, dmu, ds = _backward_small_planes(
                    grad.to(dtype), x.to(dtype), gamma.to(dtype), beta.to(dtype), mean, rstd, mu, s, groups,
                    ctx.needs_input_grad[0])
            dx = None if dx is None else dx.to(x.dtype)
            return dx, dgamma.to(gamma.dtype), dbeta.to(beta.dtype), dmu, ds, None, None
        with _no_autocast(x.device.type):
            xc, g = x.to(dtype), grad.to(dtype).contiguous()
            # Pre-activation a = gamma * (x - mean) * rstd + beta: one per-(sample, channel) multiply-add, run as an
            # eval batch norm over N * C "channels" (the fastest such kernel on CPU but on tiny planes, see
            # `_channel_affine_`).
            scale = rstd.view(n, groups, 1) * gamma.to(dtype).view(1, groups, c // groups)
            shift = torch.addcmul(beta.to(dtype).view(1, groups, -1), mean.view(n, groups, 1), scale, value=-1.0)
            if not _norm_kernel_wins(xc):
                a = torch.addcmul(shift.view(n, c, 1, 1), xc, scale.view(n, c, 1, 1))
            else:
                zeros, ones = _bn_constants(n * c, dtype, x.device)[:2]
                a = torch.batch_norm(xc.reshape(1, n * c, hw), scale.view(-1), shift.view(-1), zeros, ones, False,
                                     0.0, 0.0, False).view(x.shape)
            o = F.silu(a) if out is None else out.to(dtype)  # low-precision output: sums of the fp32 activation
            sgo, sg = _channel_sums(g, o)
            ds = sgo - mu * sg if out is None else sgo / s  # sum(grad * (z - mu)), z = out / s + mu
            # d/da without the per-channel factor s, which goes into the norm's weight (for dx) and its sums.
            ga = torch.ops.aten.silu_backward.grad_input(g, a, grad_input=a)
            dx, dgamma, dbeta = torch.ops.aten.native_group_norm_backward(
                ga, xc, mean, rstd, gamma.to(dtype) * s, n, c, hw, groups, [ctx.needs_input_grad[0], True, True])
        dx = None if dx is None else dx.to(x.dtype)
        return dx, (dgamma * s).to(gamma.dtype), (dbeta * s).to(beta.dtype), -s * sg, ds, None, None


def _backward_small_planes(g, x, gamma, beta, mean, rstd, mu, s, groups: int, need_dx: bool):
    """`_GroupNormProxySiLU.backward` for planes of fewer than `_SMALL_PLANE` pixels on CPU (the 2 x 2 maps of the
    last stages at 64 px). In NCHW every per-(sample, channel) op there runs loops of H x W = 4 elements, and the
    group-norm backward kernel took 0.7-1.1 ms on a 32 x 768..1280 x 2 x 2 input (torch 2.14), 65-85x a plain
    multiply. Here the two inputs are transposed once to (H x W, N, C), so every broadcast and sum runs along
    the contiguous C; dx is transposed back. Same formulas: with x^ the normalized input, a = gamma x^ + beta,
    z = silu(a), ga = g silu'(a) and w = gamma s, dx = rstd (g' - mean(g') - x^ mean(g' x^)) over each group
    for g' = ga w, dgamma = s sum(ga x^), dbeta = s sum(ga), dmu = -s sum(g), ds = sum(g (z - mu))."""
    n, c = x.shape[:2]
    cg = c // groups
    per_nc = lambda t: t.view(n, groups, 1).expand(n, groups, cg).reshape(n, c)  # (N, G) -> (N, C)
    hwnc = lambda t: t.reshape(n, c, -1).permute(2, 0, 1).contiguous()
    xt, gt = hwnc(x), hwnc(g)
    r = per_nc(rstd)
    xhat = torch.addcmul(-per_nc(mean) * r, xt, r)
    a = torch.addcmul(beta, xhat, gamma)
    sg, sgz = gt.sum((0, 1)), (gt * F.silu(a)).sum((0, 1))
    ga = torch.ops.aten.silu_backward.grad_input(gt, a, grad_input=a)
    p, q = (ga * xhat).sum(0), ga.sum(0)  # (N, C): per-plane sums of ga x^ and of ga
    dx = None
    if need_dx:
        w = gamma * s
        m = (torch.stack([p, q]) * w).view(2, n, groups, cg).sum(3) * (rstd / (x.numel() // (n * groups)))
        dxt = torch.addcmul(torch.addcmul(-per_nc(m[1]), xhat, -per_nc(m[0])), ga, w * r)
        dx = dxt.permute(1, 2, 0).contiguous().view(x.shape)
    return dx, p.sum(0) * s, q.sum(0) * s, -s * sg, sgz - mu * sg


def _channel_sums(g: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel sums of g * o and of g over (N, H, W). From 4x4 planes up, in one pass: group-norm backward's
    weight and bias gradients with mean 0 and rstd 1 (measured ~20% faster than batch-norm backward's, ~2x two
    sum() calls); off the CPU the two sums (smaller planes on CPU take `_backward_small_planes`)."""
    n, c = g.shape[:2]
    hw = g.numel() // (n * c)
    if not _norm_kernel_wins(g):
        return (g * o).sum((0, 2, 3)), g.sum((0, 2, 3))
    zeros, ones = _bn_constants(n, g.dtype, g.device)[:2]
    weight = _bn_constants(c, g.dtype, g.device)[1]  # unused for these sums, but torch <= 2.13 refuses None here
    _, sgo, sg = torch.ops.aten.native_group_norm_backward(g, o, zeros.view(n, 1), ones.view(n, 1), weight, n, c, hw,
                                                           1, [False, True, True])
    return sgo, sg


class GroupNormProxyAct2d(nn.Module):
    """LN/GN (no affine) followed by Proxy Norm, or, with `apply_act=False`, LN/GN with a scale only.

    The scale-only form is what the authors put after the project 1x1 conv (no activation follows, and a shift
    would be redundant with the next block's norm). `fused=True` (default): PN's affine goes into the group norm
    (normalize + affine in one kernel) and the proxy correction is one multiply-add; eager training with SiLU runs
    `_GroupNormProxySiLU` (keeps what plain LN keeps), everything else (inference, torch.compile, export, trace,
    script) the same ops through autograd or none. `fused=False`: group_norm without affine, then
    `ProxyNormAct2d`, the spec's formula op by op; the same function, kept as the readable reference.
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
        pn = self.pn
        if pn is None:
            return F.group_norm(x, self.num_groups, self.weight, None, self.eps)
        if not torch.jit.is_scripting():
            if isinstance(x, torch.fx.Proxy):
                return _untraced_layer(self, x)
        if not self.fused:
            return pn(F.group_norm(x, self.num_groups, None, None, self.eps))
        if not torch.jit.is_scripting():
            if isinstance(pn.act, nn.SiLU) and pn.triton_kernel and _triton_allowed(x):
                return self._forward_triton(x)
            if isinstance(pn.act, nn.SiLU) and _kernel_applies(x, pn.cpu_kernel):
                return self._forward_kernel(x)
            if torch.is_grad_enabled() and isinstance(pn.act, nn.SiLU) and not tracing():
                return self._forward_recompute(x)
        dtype = _compute_dtype(x.dtype)  # half-precision models (IPU) too: the norm runs in fp32
        y = F.group_norm(x.to(dtype), self.num_groups, pn.weight.to(dtype), pn.bias.to(dtype), self.eps)
        return pn.normalize_activated(F.silu(y, inplace=True) if isinstance(pn.act, nn.SiLU) else pn.act(y), x.dtype)

    @torch.jit.unused
    def _forward_recompute(self, x: torch.Tensor) -> torch.Tensor:
        mu, s = self.pn.proxy_stats()
        return _GroupNormProxySiLU.apply(x, self.pn.weight, self.pn.bias, mu, s, self.num_groups, self.eps)

    @torch.jit.unused
    def _forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled CPU kernel (`cpu_kernel`): training and inference, eager and torch.compile; its autograd
        keeps the norm's input and per-group statistics, like `_GroupNormProxySiLU`."""
        mu, s = self.pn.proxy_stats()
        dtype = mu.dtype  # fp32 (fp64 for fp64 models), as on the ATen path
        out = torch.ops.g16net_pn.forward(x.to(dtype).contiguous(), self.pn.weight.to(dtype),
                                          self.pn.bias.to(dtype), mu, s, self.num_groups, self.eps)[0]
        return out.to(x.dtype)

    @torch.jit.unused
    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        """The Triton kernel (`triton_kernel`): x in its own dtype and layout (NCHW or channels_last), fp32
        arithmetic (fp64 for fp64); its autograd keeps x and per-group statistics, like `_forward_kernel`."""
        mu, s = self.pn.proxy_stats()
        return torch.ops.g16net_pn_triton.forward(x, self.pn.weight, self.pn.bias, mu, s, self.num_groups,
                                                  self.eps)[0]
