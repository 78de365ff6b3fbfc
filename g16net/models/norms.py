"""Normalization choices (the paper's ablation axis), one registry entry each.

An entry builds a timm-style norm+act layer: `build(num_features, apply_act, act_layer) -> nn.Module`.
`apply_act=False` is the norm after the project 1x1 conv, where no activation follows. Adding a norm is one
`register_norm(...)` call, here or in a module of one's own that its norm yaml names (`import: mypkg.mynorms`);
`create_model(norm=...)`, the timm entry points and the Hydra `norm=` group all read this registry.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from timm.layers import BatchNormAct2d, EvoNorm2dS0, GroupNorm1Act, GroupNormAct, StdConv2d
from torch import nn

from .proxy_norm import GroupNormProxyAct2d

EPS = 1e-3  # the authors' (and TF EfficientNet's) norm epsilon
GN_GROUPS = 4  # the paper's GN baseline: 4 groups (a group count, not a group size)


@dataclass(frozen=True)
class NormSpec:
    """Everything the code knows about a norm; nothing else tests its name."""
    label: str  # as written in the paper's legends (results tables, figures)
    build: Callable[..., nn.Module]
    batch_independent: bool  # False: the output of a sample depends on the rest of its batch (BN)
    recalibrate_on_finetune: bool = False  # `finetune.recalibrate_bn: auto` re-estimates its statistics (FixRes)
    decayed_params: tuple[str, ...] = ()  # its layers' parameters that take weight decay (Proxy Norm's proxies)
    conv_layer: type[nn.Conv2d] | None = None  # the class of the convs this norm follows (None: plain nn.Conv2d)


NORMS: dict[str, NormSpec] = {}


def register_norm(name: str, label: str, build: Callable[..., nn.Module], batch_independent: bool = True,
                  recalibrate_on_finetune: bool = False, decayed_params: tuple[str, ...] = (),
                  conv_layer: type[nn.Conv2d] | None = None):
    NORMS[name] = NormSpec(label, build, batch_independent, recalibrate_on_finetune, decayed_params, conv_layer)


def check_norm(norm: str) -> NormSpec:
    if norm not in NORMS:
        raise ValueError(f"unknown norm={norm!r}; allowed: {', '.join(NORMS)} (or one of your own, registered by "
                         "register_norm in a module that its norm yaml names: `import: mypkg.mynorms`)")
    return NORMS[norm]


def norm_act_factory(norm: str, act_layer=nn.SiLU) -> Callable[..., nn.Module]:
    """The `norm_layer` callable timm's blocks expect: (num_features, apply_act=True, **ignored) -> module."""
    spec = check_norm(norm)

    def make(num_features: int, apply_act: bool = True, **_ignored) -> nn.Module:
        # _ignored: timm passes inplace/device/dtype; every layer here is created on CPU in fp32.
        return spec.build(num_features, apply_act=apply_act, act_layer=act_layer)

    return make


def _bn(c, apply_act, act_layer):
    return BatchNormAct2d(c, eps=EPS, apply_act=apply_act, act_layer=act_layer)


def _gn(c, apply_act, act_layer):
    return GroupNormAct(c, num_groups=GN_GROUPS, eps=EPS, apply_act=apply_act, act_layer=act_layer)


def _ln(c, apply_act, act_layer):
    return GroupNorm1Act(c, eps=EPS, apply_act=apply_act, act_layer=act_layer)


def _in(c, apply_act, act_layer):
    return GroupNormAct(c, num_groups=c, eps=EPS, apply_act=apply_act, act_layer=act_layer)


def _evos0(c, apply_act, act_layer):
    # EvoNorm-S0 carries its own sigmoid-gated nonlinearity, so act_layer does not apply.
    return EvoNorm2dS0(c, group_size=8, apply_act=apply_act, eps=EPS)


# BatchNorm + SiLU: the batch-dependent baseline.
register_norm("bn", "BN", _bn, batch_independent=False, recalibrate_on_finetune=True)
register_norm("gn", "GN", _gn)  # GroupNorm, GN_GROUPS groups, affine, + SiLU: the paper's GN baseline
register_norm("ln", "LN", _ln)  # LayerNorm over (C, H, W) = GroupNorm with 1 group, affine, + SiLU
# LayerNorm (no affine) + Proxy-Normalized SiLU: the paper's proposal; and its GN_GROUPS-group GroupNorm variant.
PROXY_PARAMS = ("proxy_weight", "proxy_bias")  # beta~, gamma~: decayed in the authors' code
register_norm("ln_pn", "LN+PN", partial(GroupNormProxyAct2d, num_groups=1, eps=EPS), decayed_params=PROXY_PARAMS)
register_norm("gn_pn", "GN+PN", partial(GroupNormProxyAct2d, num_groups=GN_GROUPS, eps=EPS),
              decayed_params=PROXY_PARAMS)
register_norm("evos0", "EvoNorm-S0", _evos0)  # timm's EvoNorm-S0 (group size 8), an extra baseline
# InstanceNorm (one group per channel, affine) + SiLU. On a 1x1 map every channel is its own mean, so it outputs
# its bias alone: at inputs of 32 px or less (stride 32) the last stages and the head see nothing of the image.
register_norm("in", "IN", _in)
# LayerNorm + SiLU after weight-standardized convs (timm's StdConv2d: each filter zero-mean, unit-variance over its
# fan-in, in every forward) wherever a norm follows a conv: the stem, expand, spatial, project and head convs; not
# the squeeze-excite's, which no norm follows. Same parameters as LN (the standardization has none).
register_norm("ln_ws", "LN+WS", _ln, conv_layer=StdConv2d)
