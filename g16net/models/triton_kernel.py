"""Triton kernels of LN/GN + Proxy Norm + SiLU for GPUs, forward and backward: the semantics of the CPU kernel's
`torch.ops.g16net_pn.forward`, as the custom ops `torch.ops.g16net_pn_triton.forward` and `.backward`.

Opt-in until measured on a GPU: layers use it with G16NET_TRITON_KERNEL=1 (`ProxyNormAct2d.triton_kernel`).
Why: on a GPU the ATen path is group_norm, silu and an affine forward (fp32 NCHW copies included), then a
recompute, sums, silu_backward and group_norm_backward; here the forward reads x twice and writes once, the
backward reads x and the gradient twice and writes dx once, in x's own layout and dtype.

Work is cut into tiles of (channels x pixels) of one sample, from (N, C, H*W) strides: NCHW and channels_last read
in place, and the channel of a tile's row is known without a per-element division. To fill a GPU when N x
channel blocks is small (LN on large maps), each tile row's pixels are split into chunks whose partial results a
small kernel finishes (no atomics: deterministic). Statistics: per-chunk mean and M2 combined as Chan et al. do,
so a large mean costs no digits; all arithmetic in fp32, or fp64 for fp64 inputs.

Under TRITON_INTERPRET=1, set before triton is first imported (triton's own functions are bound then), the
kernels run on CPU tensors in Triton's interpreter: that is how they are tested without a GPU.
"""

from __future__ import annotations  # kernel annotations stay strings: this module imports without triton

import os
from contextlib import nullcontext
from functools import lru_cache

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch builds: `available()` is False and the ops are not defined
    triton = tl = None

LIB = "g16net_pn_triton"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Tile shape and grid size: chosen by reasoning, not yet measured on a GPU. Tests shrink them to cover splits.
_TILE = 2048  # elements per tile (a power of two): 16 per thread at 4 warps
_MAX_PIXELS = 1024  # NCHW: pixels per tile row, so large maps still take two channels per tile
_PROGRAMS_PER_SM = 8  # aim for this many programs per SM before splitting tile rows into chunks
_INTERPRETER_PROGRAMS = 4  # under the interpreter: few programs (each is Python), but still some splits


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


@_jit
def _fwd_stats(x_ptr, pmean_ptr, pm2_ptr, C, HW, S, CHUNK, NCB, s_n, s_c, s_p, BC: tl.constexpr, BP: tl.constexpr):
    """Per (sample, channel, chunk of pixels): mean and M2 (sum of squared deviations) of x."""
    acc = pmean_ptr.dtype.element_ty
    pid, sp = tl.program_id(0), tl.program_id(1)
    n, cb = pid // NCB, pid % NCB
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    base = x_ptr + n.to(tl.int64) * s_n + c[:, None].to(tl.int64) * s_c
    p0 = sp * CHUNK
    p1 = tl.minimum(p0 + CHUNK, HW)
    mean = tl.zeros([BC], acc)
    m2 = tl.zeros([BC], acc)
    for p in range(p0, p1, BP):
        pp = p + tl.arange(0, BP)
        mask = cmask[:, None] & (pp < p1)[None, :]
        v = tl.load(base + pp[None, :] * s_p, mask=mask, other=0.0).to(acc)
        seen, cnt = tl.cast(p - p0, acc), tl.cast(tl.minimum(p1 - p, BP), acc)
        t_mean = tl.sum(v, axis=1) / cnt
        d = tl.where(mask, v - t_mean[:, None], 0.0)
        delta = t_mean - mean
        mean += delta * (cnt / (seen + cnt))
        m2 += tl.sum(d * d, axis=1) + delta * delta * (seen * cnt / (seen + cnt))
    out = (n * S + sp) * C + c
    tl.store(pmean_ptr + out, mean, mask=cmask)
    tl.store(pm2_ptr + out, m2, mask=cmask)


@_jit
def _fwd_finalize(pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, C, HW, G, CG, S, CHUNK, eps, BS: tl.constexpr,
                  BK: tl.constexpr):
    """Per (sample, group): the chunks' (mean, M2) combined into mean and 1 / sqrt(var + eps)."""
    acc = mean_ptr.dtype.element_ty
    ng = tl.program_id(0)
    n, g = ng // G, ng % G
    s = tl.arange(0, BS)
    cnt = tl.cast(tl.minimum(CHUNK, HW - s * CHUNK), acc)[:, None]  # pixels in chunk s
    rows = (n * S + s)[:, None] * C + g * CG
    total = tl.cast(CG * HW, acc)
    tot = tl.zeros([BS, BK], acc)
    for k in range(0, CG, BK):
        kk = k + tl.arange(0, BK)
        mask = (s < S)[:, None] & (kk < CG)[None, :]
        tot += tl.load(pmean_ptr + rows + kk[None, :], mask=mask, other=0.0) * cnt
    mean = tl.sum(tl.sum(tot, axis=1), axis=0) / total
    tot = tl.zeros([BS, BK], acc)
    for k in range(0, CG, BK):
        kk = k + tl.arange(0, BK)
        mask = (s < S)[:, None] & (kk < CG)[None, :]
        d = tl.load(pmean_ptr + rows + kk[None, :], mask=mask, other=0.0) - mean
        tot += tl.load(pm2_ptr + rows + kk[None, :], mask=mask, other=0.0) + tl.where(mask, d * d * cnt, 0.0)
    var = tl.maximum(tl.sum(tl.sum(tot, axis=1), axis=0) / total, 0.0)
    tl.store(mean_ptr + ng, mean)
    tl.store(rstd_ptr + ng, 1.0 / tl.sqrt(var + eps))


@_jit
def _tile_rows(NCB, C, G, CG, BC: tl.constexpr):
    """This program's sample n, its block of channels c (with the mask of those < C) and their groups n G + c/CG."""
    pid = tl.program_id(0)
    n = pid // NCB
    c = (pid % NCB) * BC + tl.arange(0, BC)
    return n, c, c < C, n * G + c // CG


@_jit
def _fwd_apply(x_ptr, out_ptr, gamma_ptr, beta_ptr, mu_ptr, s_ptr, mean_ptr, rstd_ptr, C, HW, G, CG, CHUNK, NCB,
               s_n, s_c, s_p, BC: tl.constexpr, BP: tl.constexpr):
    """out = (silu(gamma x^ + beta) - mu) s, as silu((x - mean) A + beta) S - M with per-row A, S, M: centred
    first, as the CPU kernel, so |x| far above its spread costs no digits (x A + B would cancel two large terms)."""
    acc = mean_ptr.dtype.element_ty
    n, c, cmask, grp = _tile_rows(NCB, C, G, CG, BC)
    sp = tl.program_id(1)
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)[:, None]
    a_scale = tl.load(gamma_ptr + c, mask=cmask, other=0.0).to(acc) * tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    a_shift = tl.load(beta_ptr + c, mask=cmask, other=0.0).to(acc)
    s = tl.load(s_ptr + c, mask=cmask, other=0.0).to(acc)
    m = tl.load(mu_ptr + c, mask=cmask, other=0.0).to(acc) * s
    off = n.to(tl.int64) * s_n + c[:, None].to(tl.int64) * s_c
    p0 = sp * CHUNK
    p1 = tl.minimum(p0 + CHUNK, HW)
    for p in range(p0, p1, BP):
        pp = p + tl.arange(0, BP)
        mask = cmask[:, None] & (pp < p1)[None, :]
        o = off + pp[None, :] * s_p
        a = (tl.load(x_ptr + o, mask=mask, other=0.0).to(acc) - mean) * a_scale[:, None] + a_shift[:, None]
        y = a * tl.sigmoid(a) * s[:, None] - m[:, None]
        tl.store(out_ptr + o, y.to(out_ptr.dtype.element_ty), mask=mask)


@_jit
def _bwd_tiles(x_ptr, g_ptr, dx_ptr, part_ptr, gamma_ptr, beta_ptr, mu_ptr, s_ptr, mean_ptr, rstd_ptr, q_ptr, N, C,
               HW, G, CG, S, CHUNK, NCB, s_n, s_c, s_p, BC: tl.constexpr, BP: tl.constexpr, DX: tl.constexpr):
    """Recomputes a = gamma x^ + beta and ga = g silu'(a). DX=False: per (sample, chunk, channel) sums of
    g (z - mu), g, ga x^ and ga into part (4, N, S, C), centred on mu as ds = sum(g z) - mu sum(g) would cancel.
    DX=True: dx = rstd (ga w - q1 - x^ q2) with w = gamma s and q the per-group means of ga w and ga w x^
    (`_bwd_finalize`)."""
    acc = mean_ptr.dtype.element_ty
    n, c, cmask, grp = _tile_rows(NCB, C, G, CG, BC)
    sp = tl.program_id(1)
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)[:, None]
    r = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)[:, None]
    mu = tl.load(mu_ptr + c, mask=cmask, other=0.0).to(acc)[:, None]
    gm = tl.load(gamma_ptr + c, mask=cmask, other=0.0).to(acc)[:, None]
    bt = tl.load(beta_ptr + c, mask=cmask, other=0.0).to(acc)[:, None]
    w = gm * tl.load(s_ptr + c, mask=cmask, other=0.0).to(acc)[:, None]
    q1 = tl.load(q_ptr + grp, mask=cmask, other=0.0)[:, None]  # written by `_bwd_finalize` for the DX pass only
    q2 = tl.load(q_ptr + N * G + grp, mask=cmask, other=0.0)[:, None]
    off = n.to(tl.int64) * s_n + c[:, None].to(tl.int64) * s_c
    s_gz = tl.zeros([BC, BP], acc)
    s_g = tl.zeros([BC, BP], acc)
    s_gax = tl.zeros([BC, BP], acc)
    s_ga = tl.zeros([BC, BP], acc)
    p0 = sp * CHUNK
    p1 = tl.minimum(p0 + CHUNK, HW)
    for p in range(p0, p1, BP):
        pp = p + tl.arange(0, BP)
        mask = cmask[:, None] & (pp < p1)[None, :]
        o = off + pp[None, :] * s_p
        xh = (tl.load(x_ptr + o, mask=mask, other=0.0).to(acc) - mean) * r
        g = tl.load(g_ptr + o, mask=mask, other=0.0).to(acc)  # 0 off the tile: every sum below gets 0 there
        a = xh * gm + bt
        sig = tl.sigmoid(a)
        z = a * sig
        ga = g * (sig + z * (1.0 - sig))  # silu'(a) = sig (1 + a (1 - sig))
        if DX:
            tl.store(dx_ptr + o, (r * (ga * w - q1 - xh * q2)).to(dx_ptr.dtype.element_ty), mask=mask)
        else:
            s_gz += g * (z - mu)
            s_g += g
            s_gax += ga * xh
            s_ga += ga
    if not DX:
        out = part_ptr + (n * S + sp) * C + c
        plane = N * S * C
        tl.store(out, tl.sum(s_gz, axis=1), mask=cmask)
        tl.store(out + plane, tl.sum(s_g, axis=1), mask=cmask)
        tl.store(out + 2 * plane, tl.sum(s_gax, axis=1), mask=cmask)
        tl.store(out + 3 * plane, tl.sum(s_ga, axis=1), mask=cmask)


@_jit
def _bwd_finalize(part_ptr, gamma_ptr, s_ptr, mu_ptr, dgamma_ptr, dbeta_ptr, dmu_ptr, ds_ptr, q_ptr, N, C, HW, G,
                  CG, S, NCF, BR: tl.constexpr, BCF: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr):
    """Programs < NCF: per channel, the partial sums over (samples, chunks) into the four parameter gradients
    of gamma, beta, mu and s. The others, one per (sample, group): q = the group means of ga w and of
    ga w x^, which dx needs."""
    acc = dgamma_ptr.dtype.element_ty
    pid = tl.program_id(0)
    plane = N * S * C
    if pid < NCF:
        c = pid * BCF + tl.arange(0, BCF)
        cmask = c < C
        t_gz = tl.zeros([BR, BCF], acc)
        t_g = tl.zeros([BR, BCF], acc)
        t_gax = tl.zeros([BR, BCF], acc)
        t_ga = tl.zeros([BR, BCF], acc)
        for r in range(0, N * S, BR):
            rr = r + tl.arange(0, BR)
            mask = (rr < N * S)[:, None] & cmask[None, :]
            o = part_ptr + rr[:, None] * C + c[None, :]
            t_gz += tl.load(o, mask=mask, other=0.0)
            t_g += tl.load(o + plane, mask=mask, other=0.0)
            t_gax += tl.load(o + 2 * plane, mask=mask, other=0.0)
            t_ga += tl.load(o + 3 * plane, mask=mask, other=0.0)
        s = tl.load(s_ptr + c, mask=cmask, other=0.0).to(acc)
        sg = tl.sum(t_g, axis=0)
        tl.store(dgamma_ptr + c, tl.sum(t_gax, axis=0) * s, mask=cmask)
        tl.store(dbeta_ptr + c, tl.sum(t_ga, axis=0) * s, mask=cmask)
        tl.store(dmu_ptr + c, -s * sg, mask=cmask)
        tl.store(ds_ptr + c, tl.sum(t_gz, axis=0), mask=cmask)
    else:
        ng = pid - NCF
        n, g = ng // G, ng % G
        s = tl.arange(0, BS)
        rows = part_ptr + (n * S + s)[:, None] * C + g * CG
        t1 = tl.zeros([BS, BK], acc)
        t2 = tl.zeros([BS, BK], acc)
        for k in range(0, CG, BK):
            kk = k + tl.arange(0, BK)
            mask = (s < S)[:, None] & (kk < CG)[None, :]
            w = (tl.load(gamma_ptr + g * CG + kk, mask=kk < CG, other=0.0).to(acc)
                 * tl.load(s_ptr + g * CG + kk, mask=kk < CG, other=0.0).to(acc))[None, :]
            t1 += w * tl.load(rows + 3 * plane + kk[None, :], mask=mask, other=0.0)
            t2 += w * tl.load(rows + 2 * plane + kk[None, :], mask=mask, other=0.0)
        total = tl.cast(CG * HW, acc)
        tl.store(q_ptr + ng, tl.sum(tl.sum(t1, axis=1), axis=0) / total)
        tl.store(q_ptr + N * G + ng, tl.sum(tl.sum(t2, axis=1), axis=0) / total)


def _pow2(v: int) -> int:
    return 1 << max(0, v - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _channel_block(c: int, cap: int) -> int:
    """channels_last: the power of two (16..cap) that pads C least, the larger on ties (C = 96 -> 32, not 128)."""
    best = min(cap, _pow2(c))
    b = best // 2
    while b >= 16:
        if _cdiv(c, b) * b < _cdiv(c, best) * best:
            best = b
        b //= 2
    return best


@lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs(device: torch.device) -> int:
    if INTERPRET or device.type != "cuda":
        return _INTERPRETER_PROGRAMS
    return _PROGRAMS_PER_SM * _sm_count(torch.cuda.current_device() if device.index is None else device.index)


def _plan(n: int, c: int, hw: int, channels_last: bool, programs: int):
    """(BC, BP, channel blocks, CHUNK, chunks): a tile of BC channels x BP pixels of one sample; each tile row's
    pixels split into chunks of CHUNK (a multiple of BP) until there are about `programs` programs."""
    if channels_last:  # channels are contiguous: a wide channel block, pixels to fill the tile
        bc = _channel_block(c, min(_TILE, 128))
        bp = max(2, min(_pow2(hw), _TILE // bc))
    else:
        bp = max(2, min(_pow2(hw), _MAX_PIXELS, _TILE))
        bc = max(2, min(_pow2(c), _TILE // bp))
    ncb, tiles = _cdiv(c, bc), _cdiv(hw, bp)
    splits = min(tiles, max(1, _cdiv(programs, n * ncb)))
    chunk = _cdiv(tiles, splits) * bp
    return bc, bp, ncb, chunk, _cdiv(hw, chunk)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels read x in: channels_last if x is, else NCHW (anything else is copied to NCHW)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(x, per_channel, groups):
    if x.dim() < 2 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise RuntimeError(f"{LIB}: a floating (N, C, ...) tensor expected, got {x.dtype} of shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise RuntimeError(f"{LIB}: channels {x.shape[1]} not divisible by groups {groups}")
    for t in per_channel:
        if t.numel() != x.shape[1] or not t.is_floating_point() or t.device != x.device:
            raise RuntimeError(f"{LIB}: per-channel tensors must be floating, on x's device, with C elements")
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{LIB}: {x.device.type} tensors need TRITON_INTERPRET=1 set before triton is imported")


def _geometry(x):
    """(N, C, HW, x in its kernel layout, layout, strides (sample, channel, pixel) of that layout)."""
    n, c = x.shape[:2]
    hw = x.numel() // (n * c) if n * c else 0
    fmt = _layout(x)
    x = x.contiguous(memory_format=fmt)
    strides = (c * hw, 1, c) if fmt == torch.channels_last else (c * hw, hw, 1)
    return n, c, hw, x, fmt, strides


def _device_guard(x):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext()


def _forward(x, gamma, beta, mu, s, groups: int, eps: float):
    _check(x, (gamma, beta, mu, s), groups)
    n, c, hw, xk, fmt, (s_n, s_c, s_p) = _geometry(x)
    acc = _acc(x)
    out = torch.empty_like(x, memory_format=fmt)
    mean, rstd = x.new_empty(n, groups, dtype=acc), x.new_empty(n, groups, dtype=acc)
    if out.numel() == 0:
        return out, mean.fill_(0), rstd.fill_(0)
    gamma, beta, mu, s = (t.contiguous() for t in (gamma, beta, mu, s))
    bc, bp, ncb, chunk, splits = _plan(n, c, hw, fmt == torch.channels_last, _programs(x.device))
    cg = c // groups
    pmean, pm2 = x.new_empty(2, n * splits * c, dtype=acc)
    with _device_guard(x):
        _fwd_stats[(n * ncb, splits)](xk, pmean, pm2, c, hw, splits, chunk, ncb, s_n, s_c, s_p, BC=bc, BP=bp)
        bs = _pow2(splits)
        _fwd_finalize[(n * groups,)](pmean, pm2, mean, rstd, c, hw, groups, cg, splits, chunk, eps, BS=bs,
                                     BK=max(1, min(_pow2(cg), 2048 // bs)))
        _fwd_apply[(n * ncb, splits)](xk, out, gamma, beta, mu, s, mean, rstd, c, hw, groups, cg, chunk, ncb, s_n,
                                      s_c, s_p, BC=bc, BP=bp)
    return out, mean, rstd


def _backward(grad, x, gamma, beta, mu, s, mean, rstd, groups: int, need_dx: bool):
    _check(x, (gamma, beta, mu, s), groups)
    n, c, hw, xk, fmt, (s_n, s_c, s_p) = _geometry(x)
    acc = _acc(x)
    grads = [x.new_zeros(c, dtype=acc) for _ in range(4)]  # separate tensors: op outputs must not alias
    dx = torch.empty_like(x, memory_format=fmt) if need_dx else x.new_empty(0)
    if x.numel() == 0:
        return dx, *grads
    g = grad.contiguous(memory_format=fmt)  # a no-op where it came in x's layout, as the next conv gives it
    gamma, beta, mu, s, mean, rstd = (t.contiguous() for t in (gamma, beta, mu, s, mean, rstd))
    bc, bp, ncb, chunk, splits = _plan(n, c, hw, fmt == torch.channels_last, _programs(x.device))
    cg = c // groups
    part = x.new_empty(4, n * splits * c, dtype=acc)
    q = x.new_empty(2, n * groups, dtype=acc)
    geometry = (n, c, hw, groups, cg, splits, chunk, ncb, s_n, s_c, s_p)
    bcf, bs = min(32, _pow2(c)), _pow2(splits)
    ncf = _cdiv(c, bcf)
    with _device_guard(x):
        _bwd_tiles[(n * ncb, splits)](xk, g, dx, part, gamma, beta, mu, s, mean, rstd, q, *geometry, BC=bc, BP=bp,
                                      DX=False)
        _bwd_finalize[(ncf + (n * groups if need_dx else 0),)](
            part, gamma, s, mu, *grads, q, n, c, hw, groups, cg, splits, ncf, BR=64, BCF=bcf, BS=bs,
            BK=max(1, min(_pow2(cg), 2048 // bs)))
        if need_dx:
            _bwd_tiles[(n * ncb, splits)](xk, g, dx, part, gamma, beta, mu, s, mean, rstd, q, *geometry, BC=bc,
                                          BP=bp, DX=True)
    return dx, *grads


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the ops can run: triton importable, and a CUDA device or the interpreter."""
    return triton is not None and (INTERPRET or torch.cuda.is_available())


def _define():
    """The two ops, their fake shapes, and the forward's derivative through the backward op: eager and
    torch.compile (fullgraph) both call them, and autograd saves x, the per-channel tensors and (N, G) statistics.
    Plain custom ops, not `triton_op`: a compiled graph keeps them opaque, which is also what lets them run under
    the interpreter (triton_op traces its kernels with fake tensors, which interpreted kernels cannot take)."""
    fwd = torch.library.custom_op(
        f"{LIB}::forward", _forward, mutates_args=(),
        schema="(Tensor x, Tensor gamma, Tensor beta, Tensor mu, Tensor s, int groups, float eps)"
               " -> (Tensor, Tensor, Tensor)")
    bwd = torch.library.custom_op(
        f"{LIB}::backward", _backward, mutates_args=(),
        schema="(Tensor grad, Tensor x, Tensor gamma, Tensor beta, Tensor mu, Tensor s, Tensor mean, Tensor rstd,"
               " int groups, bool need_dx) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")

    @fwd.register_fake
    def _(x, gamma, beta, mu, s, groups, eps):
        stats = x.new_empty(x.shape[0], groups, dtype=_acc(x))
        return torch.empty_like(x, memory_format=_layout(x)), stats, torch.empty_like(stats)

    @bwd.register_fake
    def _(grad, x, gamma, beta, mu, s, mean, rstd, groups, need_dx):
        dx = torch.empty_like(x, memory_format=_layout(x)) if need_dx else x.new_empty(0)
        return dx, *(x.new_empty(x.shape[1], dtype=_acc(x)) for _ in range(4))

    def setup_context(ctx, inputs, output):
        x, gamma, beta, mu, s, groups, _ = inputs
        ctx.groups = groups
        ctx.save_for_backward(x, gamma, beta, mu, s, output[1], output[2])

    def backward(ctx, grad, _grad_mean, _grad_rstd):
        x, gamma, beta, mu, s, mean, rstd = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dgamma, dbeta, dmu, ds = bwd(grad, x, gamma, beta, mu, s, mean, rstd, ctx.groups, need_dx)
        return (dx if need_dx else None, dgamma.to(gamma.dtype), dbeta.to(beta.dtype), dmu.to(mu.dtype),
                ds.to(s.dtype), None, None)

    fwd.register_autograd(backward, setup_context=setup_context)


if triton is not None:
    _define()
