"""G16-EfficientNet (Masters et al., "Making EfficientNet More Efficient", arXiv 2106.03640).

EfficientNet-B0..B7 with the paper's two changes, following the authors' `efficientnet.py`:
  * every spatial k x k conv (stage 1 included) is a group conv with `groups = max(C // group_size, 1)`, so
    16 channels per group when C % 16 == 0, one dense group for 16/24-channel stage-1 blocks, and 2 groups of 20
    for B3's 40-channel first block. timm's `num_groups` asserts C % group_size == 0 and cannot say this, so the
    rule lives here and timm's blocks receive the resulting per-block group size;
  * MBConv expansion 4 instead of 6 in stages 2-7 (stage 1 keeps 1).
`group_size=1, expand_ratio=6` is the original depthwise EfficientNet (G1). Everything else is EfficientNet's:
divisor-8 channel rounding, ceil depth scaling, SE at 0.25 of the block *input* width, SiLU, stochastic depth
`drop_path_rate * i / N` for block i of N (the authors' rule: the last block gets (N-1)/N of the rate), per-size
dropout before the classifier.

  size  width depth dropout native half  mixup cutmix    size  width depth dropout native half  mixup cutmix
  b0    1.0   1.0   0.2     224    160   0.1   -         b4    1.4   1.8   0.4     380    252   0.2   0.85
  b1    1.0   1.1   0.2     240    176   0.1   0.95      b5    1.6   2.2   0.4     456    328   0.2   0.8
  b2    1.1   1.2   0.3     260    196   0.1   0.9       b6    1.8   2.6   0.5     528    -     0.2   0.8
  b3    1.2   1.4   0.3     300    204   0.2   0.9       b7    2.0   3.1   0.5     600    -     0.2   0.8
Mixup alpha and CutMix lambda are the authors' per-size training settings (B6/B7: not in the paper's runs, B5's
values carried on); `augment.*: auto` reads them from here.
"""

import contextlib
import math
from dataclasses import dataclass
from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import create_classifier, make_divisible
from timm.models import checkpoint_seq
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from timm.models._features import feature_take_indices
from torch import nn

from .norms import check_norm, norm_act_factory
from .proxy_norm import batched_proxy_stats, tracing


@dataclass(frozen=True)
class SizeSpec:
    width: float
    depth: float
    dropout: float
    native_res: int
    half_res: int | None  # about half the pixels with half % 32 == native % 32; None: the authors ran none
    mixup_alpha: float  # the authors' per-sample Mixup strength for this size
    cutmix_lambda: float | None  # the authors' CutMix "version 1" lambda; None: no CutMix


SIZES = {
    "b0": SizeSpec(1.0, 1.0, 0.2, 224, 160, 0.1, None),
    "b1": SizeSpec(1.0, 1.1, 0.2, 240, 176, 0.1, 0.95),
    "b2": SizeSpec(1.1, 1.2, 0.3, 260, 196, 0.1, 0.9),
    "b3": SizeSpec(1.2, 1.4, 0.3, 300, 204, 0.2, 0.9),
    "b4": SizeSpec(1.4, 1.8, 0.4, 380, 252, 0.2, 0.85),
    "b5": SizeSpec(1.6, 2.2, 0.4, 456, 328, 0.2, 0.8),
    "b6": SizeSpec(1.8, 2.6, 0.5, 528, None, 0.2, 0.8),
    "b7": SizeSpec(2.0, 3.1, 0.5, 600, None, 0.2, 0.8),
}

# EfficientNet-B0 stages: (block, repeats, kernel, stride of first block, expansion, out channels).
# Expansion None = the model's expand_ratio (6 in EfficientNet, 4 in G16).
STAGES = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, None, 24),
    ("ir", 2, 5, 2, None, 40),
    ("ir", 3, 3, 2, None, 80),
    ("ir", 3, 5, 1, None, 112),
    ("ir", 4, 5, 2, None, 192),
    ("ir", 1, 3, 1, None, 320),
)
STEM_CHS, HEAD_CHS, SE_RATIO = 32, 1280, 0.25


def check_size(size: str) -> SizeSpec:
    if size not in SIZES:
        raise ValueError(f"unknown size={size!r}; allowed: {', '.join(SIZES)}")
    return SIZES[size]


def timm_cfg(size: str) -> dict:
    """timm's pretrained_cfg for a size (no weights exist: no url or hub id): evaluation at the native
    resolution with ImageNet's normalization, the unpooled feature map (`pool_size`) there, the layer names that
    timm's input-channel and classifier adaptation look for."""
    res = check_size(size).native_res
    return dict(
        num_classes=1000, input_size=(3, res, res), pool_size=(math.ceil(res / 32),) * 2, crop_pct=224 / 256,
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="conv_stem",
        classifier="classifier",
    )


GROUP_RULES = ("authors", "divisor")
POOLS = ("avg", "max", "avgmax", "")  # timm's global pools that keep num_features channels; "": none (NCHW out)


def check_pool(global_pool: str) -> str:
    if global_pool not in POOLS:
        raise ValueError(f"unknown global_pool={global_pool!r}; allowed: {', '.join(map(repr, POOLS))}")
    return global_pool


def spatial_groups(channels: int, group_size: int, rule: str = "authors") -> int:
    """Group count of a spatial conv with `channels` channels.

    "authors": max(C // group_size, 1), exactly the authors' code; it may not divide C (then the model is invalid).
    "divisor": the largest divisor of C not above that, i.e. as many groups as possible with at least
    `group_size` channels each. Identical to "authors" wherever that divides, and it always divides. Needed for
    G16-B6, whose 56-channel first block gets 56 // 16 = 3 groups under the authors' rule.
    """
    groups = max(channels // group_size, 1)
    if rule == "divisor":
        while channels % groups:
            groups -= 1
    return groups


def block_plan(size: str, expand_ratio: float) -> list[dict]:
    """One dict per block: stage, type, in/out/mid channels, kernel, stride, expansion. Group-size free."""
    spec = check_size(size)
    chs = lambda c: make_divisible(c * spec.width, 8)  # TF round_filters: divisor 8, never below 90%
    plan, in_chs = [], chs(STEM_CHS)
    for stage, (kind, repeats, kernel, stride, exp, out) in enumerate(STAGES):
        exp = 1 if exp == 1 else expand_ratio
        for i in range(math.ceil(spec.depth * repeats)):
            mid = in_chs if kind == "ds" else make_divisible(in_chs * exp, 8)
            plan.append(dict(stage=stage, kind=kind, in_chs=in_chs, out_chs=chs(out), mid_chs=mid, kernel=kernel,
                             stride=stride if i == 0 else 1, exp=exp))
            in_chs = chs(out)
    return plan


def _check_args(size: str, group_size: int, expand_ratio: float, group_rule: str) -> list[dict]:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} must be an integer >= 1 (1 = depthwise, 16 = G16)")
    if expand_ratio < 1:
        raise ValueError(f"expand_ratio={expand_ratio!r} must be >= 1 (EfficientNet uses 6, G16 uses 4)")
    if group_rule not in GROUP_RULES:
        raise ValueError(f"unknown group_rule={group_rule!r}; allowed: {', '.join(GROUP_RULES)}")
    plan = block_plan(size, expand_ratio)
    mids = [b["mid_chs"] for b in plan]
    for i, c in enumerate(mids):
        if c % spatial_groups(c, group_size, group_rule):
            ok = [g for g in range(1, 129) if all(m % spatial_groups(m, g) == 0 for m in mids)]
            raise ValueError(
                f"group_size={group_size} cannot divide block {i}'s {c}-channel spatial conv into equal groups "
                f"(groups = max({c} // {group_size}, 1) = {spatial_groups(c, group_size)}). Allowed group sizes "
                f"for size={size!r}, expand_ratio={expand_ratio} (up to 128): {ok}; or pass group_rule='divisor' "
                f"to use the largest group count that divides (the authors' code cannot build this model either)"
            )
    return plan


DROP_PATH_RATE = 0.2  # stochastic depth at the last block when none is given (the authors')


class G16EfficientNet(nn.Module):
    """EfficientNet with grouped spatial convs and an injectable norm; see the module docstring for the rule.

    Submodules are named so the finetuning phase can pick the head: `conv_head`, `norm_head`, `classifier`.
    timm's model interface: `num_classes` (0: no classifier, `forward` gives the pooled features),
    `num_features` = `head_hidden_size`, `global_pool` ("avg"; "" for the unpooled map; see `POOLS`),
    `pretrained_cfg`/`default_cfg`, `reset_classifier`, `forward_features`/`forward_head(pre_logits=)`,
    `forward_intermediates`/`prune_intermediate_layers`, `set_grad_checkpointing`, `group_matcher`.
    """

    def __init__(
        self, size: str = "b0", group_size: int = 16, expand_ratio: float = 4, norm: str = "ln_pn",
        num_classes: int = 1000, drop_rate: float | None = None, drop_path_rate: float | None = None,
        in_chans: int = 3, group_rule: str = "authors", zero_init_last: bool = False, global_pool: str = "avg",
    ):
        super().__init__()
        spec = check_size(size)
        check_norm(norm)
        plan = _check_args(size, group_size, expand_ratio, group_rule)
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0 (0: no classifier, pooled features out)")
        check_pool(global_pool)
        self.size, self.group_size, self.expand_ratio, self.norm = size, group_size, expand_ratio, norm
        self.group_rule = group_rule
        drop_rate = spec.dropout if drop_rate is None else drop_rate
        drop_path_rate = DROP_PATH_RATE if drop_path_rate is None else drop_path_rate
        norm_act = norm_act_factory(norm, nn.SiLU)
        conv_layer = check_norm(norm).conv_layer

        stem_chs = plan[0]["in_chs"]
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stride=2, padding=1, bias=False)
        self.norm_stem = norm_act(stem_chs)
        groups = [spatial_groups(b["mid_chs"], group_size, group_rule) for b in plan]
        blocks = [self._block(b, groups[i], norm_act, drop_path_rate * i / len(plan))
                  for i, b in enumerate(plan)]
        self.blocks = nn.Sequential(*(
            nn.Sequential(*(blk for blk, b in zip(blocks, plan) if b["stage"] == s)) for s in range(len(STAGES))
        ))

        self.feature_info = _feature_info(plan)
        self.num_features = self.head_hidden_size = make_divisible(HEAD_CHS * spec.width, 8)
        self.conv_head = nn.Conv2d(plan[-1]["out_chs"], self.num_features, 1, bias=False)
        self.norm_head = norm_act(self.num_features)
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.grad_checkpointing = False
        cfg = timm_cfg(size)  # timm.create_model replaces it by the registered one (the same, with its name)
        self.pretrained_cfg = self.default_cfg = {**cfg, "input_size": (in_chans, *cfg["input_size"][1:])}
        if conv_layer is not None:
            _swap_normed_convs(self, conv_layer)
        self.apply(_init_weights)
        if zero_init_last:
            self._zero_init_last()

    def _zero_init_last(self):
        """Residual blocks start as identities: the scale of the norm closing each skip-connected branch is 0.
        Not the authors' init (PAPER.md section 2); short small-batch runs need it (README "The recipe")."""
        for blk in self.blocks.modules():
            if getattr(blk, "has_skip", False):
                last = blk.bn3 if isinstance(blk, InvertedResidual) else blk.bn2
                nn.init.zeros_(last.weight)

    @staticmethod
    def _block(b: dict, groups: int, norm_act, drop_path: float) -> nn.Module:
        se = partial(SqueezeExcite, rd_channels=max(1, int(b["in_chs"] * SE_RATIO)))
        common = dict(dw_kernel_size=b["kernel"], stride=b["stride"], group_size=b["mid_chs"] // groups,
                      act_layer=nn.SiLU, norm_layer=norm_act, se_layer=se, drop_path_rate=drop_path)
        if b["kind"] == "ds":
            return DepthwiseSeparableConv(b["in_chs"], b["out_chs"], **common)
        return InvertedResidual(b["in_chs"], b["out_chs"], exp_ratio=b["exp"], **common)

    def head_modules(self) -> list[nn.Module]:
        """What native-resolution finetuning trains: head 1x1 conv, its norm (and PN params), classifier."""
        return [self.conv_head, self.norm_head, self.classifier]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        """A new classifier for `num_classes` (0: none); `global_pool` one of `POOLS` (None: keep the current)."""
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0 (0: no classifier)")
        pool = self.global_pool.pool_type if global_pool is None else check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=pool)
        _init_weights(self.classifier)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block in the backward instead of keeping its activations (timm's `checkpoint_seq`)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise learning-rate decay: stem, each block (each stage if `coarse`),
        then the head."""
        return dict(stem=r"^conv_stem|^norm_stem",
                    blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                            (r"^conv_head|^norm_head", (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self._batch_stats(x):
                return self._forward_features_batched(x)
        return self._forward_features(x)

    @torch.jit.unused
    def _batch_stats(self, x) -> bool:
        """Whether to compute Proxy Norm's statistics for all layers at once: eager runs only. Compiled and exported
        graphs fuse the per-layer statistics themselves; symbolic (fx) tracing sees a Proxy, not a tensor; under
        gradient checkpointing a recomputed block must compute what its first run did."""
        return not (tracing() or isinstance(x, torch.fx.Proxy) or self.grad_checkpointing)

    @torch.jit.unused
    def _forward_features_batched(self, x: torch.Tensor) -> torch.Tensor:
        with batched_proxy_stats(self):  # Proxy Norm's per-layer statistics as one computation (a no-op for BN/GN/LN)
            return self._forward_features(x)

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_stem(self.conv_stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x, flatten=True)
        else:
            x = self.blocks(x)
        return self.norm_head(self.conv_head(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    @torch.jit.unused
    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature interface: the `feature_info` maps (strides 2 to 32) that `indices` selects
        (None: all; n: the last n; a sequence: those levels), and, unless `intermediates_only`, the
        `forward_features` output. `stop_early` stops after the last map taken (the head runs only if every stage
        did). `norm` is accepted for timm's signature: no final norm applies to a stage output here."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}; allowed: 'NCHW'")
        with batched_proxy_stats(self) if self._batch_stats(x) else contextlib.nullcontext():
            take, last = feature_take_indices(len(self.feature_info), indices)
            take_stages = {self.feature_info[i]["stage"] for i in take}
            n_stages = self.feature_info[last]["stage"] + 1 if stop_early or intermediates_only else len(self.blocks)
            x = self.norm_stem(self.conv_stem(x))
            maps = []
            for i, stage in enumerate(self.blocks[:n_stages]):
                x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
                if i in take_stages:
                    maps.append(x)
            if intermediates_only:
                return maps
            if n_stages == len(self.blocks):
                x = self.norm_head(self.conv_head(x))
            return x, maps

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what the selected `feature_info` maps do not need: the stages after the last one and, when
        the stages are cut, `prune_head` or `prune_norm`, the head (conv, norm, pool, classifier)."""
        take, last = feature_take_indices(len(self.feature_info), indices)
        n_stages = self.feature_info[last]["stage"] + 1
        cut = n_stages < len(self.blocks)
        self.blocks = self.blocks[:n_stages]
        if cut or prune_norm or prune_head:
            self.conv_head, self.norm_head = nn.Identity(), nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
            self.reset_classifier(0, "")
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _feature_info(plan: list[dict]) -> list[dict]:
    """timm's feature_info: the last stage at each output stride (2, 4, 8, 16, 32), as timm's EfficientNet."""
    info, reduction = [], 2  # the stem's stride
    for stage in range(len(STAGES)):
        blocks = [b for b in plan if b["stage"] == stage]
        reduction *= blocks[0]["stride"]
        if stage == len(STAGES) - 1 or STAGES[stage + 1][3] > 1:
            info.append(dict(num_chs=blocks[-1]["out_chs"], reduction=reduction, module=f"blocks.{stage}",
                             stage=stage))
    return info


def _swap_normed_convs(model: nn.Module, conv_layer: type[nn.Conv2d]):
    """Every plain conv a norm follows (all but the squeeze-excite's) rebuilt as `conv_layer` with the same
    arguments: the norm registry's `conv_layer` (weight standardization for LN+WS). Same parameter shapes."""
    for parent in list(model.modules()):
        if isinstance(parent, SqueezeExcite):
            continue
        for name, conv in list(parent.named_children()):
            if type(conv) is nn.Conv2d:
                setattr(parent, name, conv_layer(
                    conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device))


def _init_weights(m: nn.Module):
    if isinstance(m, nn.Conv2d):
        # He normal over fan_out / groups; for the square group conv this is the authors' fan_in init.
        fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def create_model(
    size: str = "b0", group_size: int = 16, expand_ratio: float = 4, norm: str = "ln_pn", num_classes: int = 1000,
    drop_rate: float | None = None, drop_path_rate: float | None = None, **kw,
) -> G16EfficientNet:
    """Build G16-EfficientNet (defaults) or the G1 baseline (`group_size=1, expand_ratio=6`).

    drop_rate / drop_path_rate: None = the size's dropout and 0.2. group_rule: "authors" (exact, default) or
    "divisor" (see `spatial_groups`; G16-B6 needs it). zero_init_last: residual branches start at zero (not the
    authors' init; the training job turns it on for short runs). num_classes=0: no classifier (forward gives the
    pooled features); global_pool="" with it: the unpooled map (timm's conventions). Raises ValueError naming a
    bad argument.
    """
    return G16EfficientNet(size, group_size, expand_ratio, norm, num_classes, drop_rate, drop_path_rate, **kw)
