"""timm entry points: `timm.create_model("g16_efficientnet_b0", norm="ln_pn", num_classes=10)` after `import g16net`.

  g16_efficientnet_b0 .. b7   group size 16, expansion 4 (the paper's G16)
  g1_efficientnet_b0 .. b7    group size 1 (depthwise), expansion 6 (EfficientNet, the G1 baseline)
No pretrained weights exist for these models; `pretrained=True` is an error rather than a silent random init.
"""

from timm.models import register_model

from .efficientnet import SIZES, create_model

VARIANTS = {"g16": dict(group_size=16, expand_ratio=4), "g1": dict(group_size=1, expand_ratio=6)}


def _entrypoint(name: str, size: str, arch: dict):
    def fn(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are published for g16net models; use pretrained=False")
        if kwargs.pop("features_only", False):
            raise ValueError(f"{name}: features_only is not supported")
        for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(timm_only, None)
        return create_model(size=size, **{**arch, **kwargs})

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"{name}: EfficientNet-{size.upper()}, {arch}. kwargs go to g16net.create_model (norm=...)."
    return fn


MODEL_NAMES = []
for _variant, _arch in VARIANTS.items():
    for _size in SIZES:
        _name = f"{_variant}_efficientnet_{_size}"
        globals()[_name] = register_model(_entrypoint(_name, _size, _arch))
        MODEL_NAMES.append(_name)
