"""timm entry points: `timm.create_model("g16_efficientnet_b0", norm="ln_pn", num_classes=10)` after `import g16net`.

  g16_efficientnet_b0 .. b7   group size 16, expansion 4 (the paper's G16)
  g1_efficientnet_b0 .. b7    group size 1 (depthwise), expansion 6 (EfficientNet, the G1 baseline)
No pretrained weights exist for these models; `pretrained=True` is an error rather than a silent random init.
`features_only=True` (with optional `out_indices`) gives timm's multi-scale feature extractor: a list of feature maps
at strides 2, 4, 8, 16, 32 and `feature_info` (channels, reduction, module), for detection/segmentation heads.
"""

from timm.models import FeatureListNet, register_model

from .efficientnet import SIZES, create_model
from .proxy_norm import batched_proxy_stats


class FeatureList(FeatureListNet):
    """timm's multi-scale feature wrapper (`features_only=True`), with Proxy Norm's statistics batched as in
    `G16EfficientNet.forward_features` (the wrapper calls the layers one by one, bypassing that forward)."""

    def forward(self, x):
        with batched_proxy_stats(self):
            return super().forward(x)


VARIANTS = {"g16": dict(group_size=16, expand_ratio=4), "g1": dict(group_size=1, expand_ratio=6)}


def _entrypoint(name: str, size: str, arch: dict):
    def fn(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are published for g16net models; use pretrained=False")
        features_only = kwargs.pop("features_only", False)
        out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4))
        for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(timm_only, None)
        model = create_model(size=size, **{**arch, **kwargs})
        if not features_only:
            return model
        n = len(model.feature_info)
        if not all(isinstance(i, int) and -n <= i < n for i in out_indices):
            raise ValueError(f"{name}: out_indices={out_indices!r}; allowed: indices into the {n} feature levels "
                             f"(strides {[f['reduction'] for f in model.feature_info]})")
        return FeatureList(model, out_indices=tuple(out_indices), flatten_sequential=True)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"{name}: EfficientNet-{size.upper()}, {arch}. kwargs go to g16net.create_model (norm=...)."
    return fn


for _variant, _arch in VARIANTS.items():
    for _size in SIZES:
        _name = f"{_variant}_efficientnet_{_size}"
        globals()[_name] = register_model(_entrypoint(_name, _size, _arch))
