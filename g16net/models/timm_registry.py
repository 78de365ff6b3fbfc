"""timm entry points: `timm.create_model("g16_efficientnet_b0", norm="ln_pn", num_classes=10)` after `import g16net`.

  g16_efficientnet_b0 .. b7   group size 16, expansion 4 (the paper's G16)
  g1_efficientnet_b0 .. b7    group size 1 (depthwise), expansion 6 (EfficientNet, the G1 baseline)
No pretrained weights exist for these models; `pretrained=True` is an error rather than a silent random init.
Each name has a pretrained_cfg (input size, pool size, normalization) like timm's own models, and timm's builder
makes the model, so every timm option applies: `num_classes=0` (pooled features), `global_pool=""` (unpooled),
`features_only=True` (with optional `out_indices`, and `feature_cls` "list" (default), "getter", "hook", "dict" or
"fx") gives timm's multi-scale feature extractor: a list of feature maps at strides 2, 4, 8, 16, 32 and
`feature_info` (channels, reduction, module), for detection/segmentation heads.
"""

from timm.models import (
    FeatureListNet,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    register_notrace_module,
)

from .efficientnet import SIZES, _feature_info, block_plan, create_model, timm_cfg
from .proxy_norm import GroupNormProxyAct2d, ProxyNormAct2d, batched_proxy_stats


class FeatureList(FeatureListNet):
    """timm's multi-scale feature wrapper (`features_only=True`), with Proxy Norm's statistics batched as in
    `G16EfficientNet.forward_features` (the wrapper calls the layers one by one, bypassing that forward)."""

    def forward(self, x):
        with batched_proxy_stats(self):
            return super().forward(x)


# Leaves for timm's torch.fx feature extraction: a Proxy Norm layer's forward picks its kernel by device and caches
# its statistics, which symbolic tracing cannot record; as a leaf it is one call_module node, run as in eager.
register_notrace_module(GroupNormProxyAct2d)
register_notrace_module(ProxyNormAct2d)

VARIANTS = {"g16": dict(group_size=16, expand_ratio=4), "g1": dict(group_size=1, expand_ratio=6)}
default_cfgs = generate_default_cfgs({f"{v}_efficientnet_{s}": timm_cfg(s) for v in VARIANTS for s in SIZES})


def _check_out_indices(name: str, size: str, arch: dict, out_indices):
    """timm's own check is an assertion deep in the wrapper; this one names the levels first."""
    info = _feature_info(block_plan(size, arch["expand_ratio"]))
    n = len(info)
    ok = (0 < out_indices <= n) if isinstance(out_indices, int) else \
        all(isinstance(i, int) and -n <= i < n for i in out_indices)
    if not ok:
        raise ValueError(f"{name}: out_indices={out_indices!r}; allowed: indices into the {n} feature levels "
                         f"(strides {[f['reduction'] for f in info]}), or a count 1..{n} of the last levels")


def _entrypoint(name: str, size: str, arch: dict):
    def fn(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are published for g16net models; use pretrained=False")
        if "size" in kwargs:
            raise ValueError(f"{name}: size={kwargs['size']!r} conflicts with the name; use "
                             f"{name.rsplit('_', 1)[0]}_{kwargs['size']} instead")
        if kwargs.get("features_only"):
            _check_out_indices(name, size, arch, kwargs.get("out_indices", (0, 1, 2, 3, 4)))
            if kwargs.get("feature_cls") == "list":  # timm's name for the wrapper FeatureList extends
                kwargs["feature_cls"] = FeatureList
        return build_model_with_cfg(create_model, name, pretrained=False,
                                    feature_cfg=dict(feature_cls=FeatureList, flatten_sequential=True),
                                    size=size, **{**arch, **kwargs})

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"{name}: EfficientNet-{size.upper()}, {arch}. kwargs go to g16net.create_model (norm=...)."
    return fn


for _variant, _arch in VARIANTS.items():
    for _size in SIZES:
        _name = f"{_variant}_efficientnet_{_size}"
        globals()[_name] = register_model(_entrypoint(_name, _size, _arch))
