"""Inference-time fold of Proxy Norm's post-activation affine into the layer that follows it.

In eval the proxy statistics are constants, so a PN layer is LN/GN (with PN's gamma/beta) + activation z, then the
per-channel affine y = a z + b with a = s > 0, b = -mu s: one extra pass over the activation that plain LN does
not make. `fold_for_inference` moves that affine into what reads y, exactly (up to fp32 rounding), in the manner
of timm's `reparameterize_model` (a deep copy by default, `inplace=True` to convert the model itself):

- the head (norm_head -> global mean -> dropout, identity in eval -> classifier): W' = W a, bias' = bias + W b;
- a squeeze-excite that reads y (bn2 -> se in an inverted residual, bn1 -> se in a depthwise-separable block): the
  mean commutes with the affine, so a and b fold into conv_reduce like the head; the gate g multiplies y, and
  y g = z (a g) + b g is one multiply-add in place of the multiply, so the affine costs nothing;
- a k x k (grouped, zero-padded) conv that reads y (norm_stem -> the first block's conv_dw, bn1 -> conv_dw):
  a folds into the weight's input channels (zero padding commutes with scaling); b gives conv(b, zero padding),
  a constant per output channel inside and partial sums on the border rows and columns: a map cached per input
  size and added to the conv's output in place.

What matches no pattern keeps its affine (the PN layer is left as it is). Each folded PN layer becomes
`GroupNormAct2d`: LN/GN with PN's gamma/beta, then the activation. The folded model's logits (and its
`features_only` stage outputs) equal the original's; its pre-logits (`forward_features`, `forward_head(...,
pre_logits=True)`) do not, because the head's affine now lives in the classifier. Training the folded model
would train a different parametrization: the fold refuses models in training mode and the folded modules refuse
to train.
"""

import copy

import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from torch import nn

from . import proxy_norm
from .proxy_norm import GroupNormProxyAct2d, _channel_affine_, _compute_dtype, tracing


class _EvalOnly(nn.Module):
    """Folded modules compute the eval function of the original model only."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is an inference-time fold of Proxy Norm and cannot train; "
                               "train the unfolded model and fold again")
        return super().train(False)


class GroupNormAct2d(_EvalOnly):
    """LN/GN with an affine, then the activation: a PN layer whose post-activation affine was folded forward."""

    def __init__(self, src: GroupNormProxyAct2d):
        super().__init__()
        self.num_groups, self.eps = src.num_groups, src.eps
        self.weight = nn.Parameter(src.pn.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(src.pn.bias.detach().clone(), requires_grad=False)
        self.act = src.pn.act
        self.silu = isinstance(self.act, nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if isinstance(x, torch.fx.Proxy):  # one graph node calling this module, as the PN layers (through
                return proxy_norm._untraced_layer(self, x)  # the module: torch.fx patches the name there only)
        dtype = _compute_dtype(x.dtype)  # as GroupNormProxyAct2d: the norm runs in (at least) fp32
        y = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return (F.silu(y, inplace=True) if self.silu else self.act(y)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.num_groups}, eps={self.eps}"


def _affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) in fp64 of a foldable PN layer (y = a z + b after its activation), else None."""
    if not isinstance(norm, GroupNormProxyAct2d) or norm.pn is None:
        return None
    mu, s, _ = norm.pn.constants()
    return s.double(), (-mu * s).double()


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.to(like.dtype), requires_grad=False)


class FoldedSqueezeExcite(_EvalOnly):
    """timm's SqueezeExcite on y = a z + b, given z: x_se from conv_reduce with a, b folded in, out = z (a g) + b g."""

    def __init__(self, se: SqueezeExcite, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        w = se.conv_reduce.weight  # (rd, C, 1, 1)
        w64 = w.double().flatten(1)
        bias = se.conv_reduce.bias.double() if se.conv_reduce.bias is not None else w64.new_zeros(len(w64))
        self.conv_reduce = copy.deepcopy(se.conv_reduce)
        self.conv_reduce.weight = _param((w64 * a).view_as(w), w)
        self.conv_reduce.bias = _param(bias + w64 @ b, w)
        self.act1, self.conv_expand, self.gate = se.act1, se.conv_expand, se.gate
        self.register_buffer("a", a.float().view(1, -1, 1, 1))
        self.register_buffer("b", b.float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if isinstance(x, torch.fx.Proxy):  # one graph node calling this module, as the PN layers (through
                return proxy_norm._untraced_layer(self, x)  # the module: torch.fx patches the name there only)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        g = self.gate(x_se)
        a, b = self.a.to(g.dtype), self.b.to(g.dtype)
        if tracing():  # captured graphs: the plain ops (the in-place kernel call is an eager speed-up)
            return torch.addcmul(b * g, x, a * g)
        if not x.is_contiguous():  # channels_last: no (1, N * C, H, W) view; the multiply-add in place
            return torch.addcmul(b * g, x, a * g, out=x)
        n, c = x.shape[:2]
        scale, shift = (a * g).view(n * c), (b * g).view(n * c)
        # In place, as a per-(sample, channel) affine over N * C planes (the channel-affine kernel of Proxy Norm):
        # x is the norm's fresh output, read by nothing else (the blocks' shortcut is their input). timm's
        # out-of-place multiply allocates the block's largest tensor, which on CPU costs more than the pass itself,
        # and a broadcasting addcmul was measured 2-3x slower than this kernel.
        return _channel_affine_(x.view(1, n * c, *x.shape[2:]), scale, shift).view_as(x)


class AffineInputConv2d(_EvalOnly):
    """conv(a z + b) with zero padding, given z: conv(z; W a) + conv(b ones; W).

    conv(b ones) is a (C_out, H_out, W_out) map, constant inside, partial sums on the rows and columns whose
    window reads the padding. It is made once per input size (fp64, then the output's dtype), cached, and added
    to the conv's output in place: on CPU one in-place add of a cached map was measured as fast as the channel
    affine it replaces on large maps and faster on small ones (per-op cost), while adding the borders only
    (strided strips) was slower than either.
    """

    def __init__(self, conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        w = conv.weight  # (C_out, C_in / groups, kh, kw); a scales input channel g * C_in / groups + j
        w64 = w.double()
        scale = a.view(self.groups, 1, -1, 1, 1)
        self.weight = _param((w64.view(self.groups, -1, *w.shape[1:]) * scale).view_as(w), w)
        self.register_buffer("b_in", b.view(1, -1, 1, 1).clone(), persistent=False)  # fp64
        self.register_buffer("w64", w64.clone(), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().double().clone(),
                             persistent=False)
        self._maps = {}

    def shift_map(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """conv(b ones; W) (+ the conv's bias) for an h x w input, as (1, C_out, H_out, W_out) like `like`."""
        if tracing():  # in the graph, never from or into the cache (export's fake tensors, trace's other sizes)
            return self._shift_map(h, w).to(like)
        key = (h, w, like.dtype, like.device)
        hit = self._maps.get(key)
        if hit is None:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
                hit = self._maps[key] = self._shift_map(h, w).to(like)
        return hit

    def _shift_map(self, h: int, w: int) -> torch.Tensor:
        ones = self.b_in.expand(1, -1, h, w)
        return F.conv2d(ones, self.w64, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _apply(self, fn, recurse=True):
        self._maps = {}
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if isinstance(x, torch.fx.Proxy):  # one graph node calling this module, as the PN layers (through
                return proxy_norm._untraced_layer(self, x)  # the module: torch.fx patches the name there only)
        out = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        if tracing():
            return out + self.shift_map(x.shape[2], x.shape[3], out)
        return out.add_(self.shift_map(x.shape[2], x.shape[3], out))


def is_folded(model: nn.Module) -> bool:
    """True for a model `fold_for_inference` changed (it cannot train)."""
    return any(isinstance(m, _EvalOnly) for m in model.modules())


def _fold_conv(norm, conv):
    ab = _affine(norm)
    if ab is None or type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
        return None
    return GroupNormAct2d(norm), AffineInputConv2d(conv, *ab)


def _fold_se(norm, aa, se):
    ab = _affine(norm)
    if ab is None or not isinstance(aa, nn.Identity) or type(se) is not SqueezeExcite:
        return None
    return GroupNormAct2d(norm), FoldedSqueezeExcite(se, *ab)


FOLDS = ("head", "se", "conv")


def fold_for_inference(model: nn.Module, inplace: bool = False, folds=FOLDS) -> nn.Module:
    """An eval model computing the same logits with each Proxy Norm layer's post-activation affine folded into
    what follows (see the module docstring). `folds`: which of "head", "se", "conv" to apply. Models without
    Proxy Norm come back unchanged (a copy unless `inplace`). Raises ValueError for a model in training mode."""
    if model.training:
        raise ValueError("fold_for_inference needs an eval model (call model.eval() first): the fold is exact for "
                         "the eval forward only, and the folded model cannot train")
    unknown = set(folds) - set(FOLDS)
    if unknown:
        raise ValueError(f"unknown folds {sorted(unknown)}; allowed: {', '.join(FOLDS)}")
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        for blk in model.modules():
            if isinstance(blk, InvertedResidual) and blk.conv_s2d is None:
                pairs = [("conv", ("bn1", "conv_dw")), ("se", ("bn2", "aa", "se"))]
            elif isinstance(blk, DepthwiseSeparableConv) and blk.conv_s2d is None:
                pairs = [("se", ("bn1", "aa", "se"))]
            else:
                continue
            for kind, names in pairs:
                _replace(blk, kind, names, folds)
        _fold_stem(model, folds)
        _fold_head(model, folds)
    return model


def _replace(parent, kind, names, folds):
    if kind not in folds:
        return
    new = (_fold_conv if kind == "conv" else _fold_se)(*(getattr(parent, n) for n in names))
    if new is not None:
        setattr(parent, names[0], new[0])
        setattr(parent, names[-1], new[1])


def _fold_stem(model, folds):
    """norm_stem -> blocks[0][0].conv_dw, when the first block starts with its spatial conv (G16's is a DS block)."""
    if "conv" not in folds or not hasattr(model, "norm_stem") or not hasattr(model, "blocks"):
        return
    first = model.blocks[0][0]
    # Not with a skip: the block's shortcut would read z instead of y.
    if not isinstance(first, DepthwiseSeparableConv) or first.conv_s2d is not None or first.has_skip:
        return
    new = _fold_conv(model.norm_stem, first.conv_dw)
    if new is not None:
        model.norm_stem, first.conv_dw = new


def _fold_head(model, folds):
    """norm_head -> mean over (H, W) -> dropout (identity in eval) -> classifier: W' = W a, bias' = bias + W b."""
    from .efficientnet import G16EfficientNet  # the head's order is this class's forward_head

    if "head" not in folds or type(model) is not G16EfficientNet or not isinstance(model.classifier, nn.Linear) \
            or model.global_pool.pool_type != "avg":  # a max or concatenated pool is no mean: W a, W b do not apply
        return
    ab = _affine(model.norm_head)
    if ab is None:
        return
    a, b = ab
    fc = model.classifier
    w64 = fc.weight.double()
    bias = fc.bias.double() if fc.bias is not None else w64.new_zeros(len(w64))
    fc.bias = _param(bias + w64 @ b, fc.weight)
    fc.weight = _param(w64 * a, fc.weight)
    model.norm_head = GroupNormAct2d(model.norm_head)
