"""G1/G16 EfficientNet-B0..B7 with BN, GN, LN, LN+PN, GN+PN (and EvoNorm-S0); registered in timm on import."""

from . import timm_registry  # noqa: F401  (side effect: timm.create_model knows our names)
from .efficientnet import SIZES, STAGES, G16EfficientNet, block_plan, check_size, create_model, spatial_groups
from .fold import fold_for_inference, is_folded
from .norms import NORMS, check_norm, register_norm
from .proxy_norm import GroupNormProxyAct2d, ProxyNormAct2d, gaussian_quantiles

__all__ = [
    "NORMS", "SIZES", "STAGES", "G16EfficientNet", "GroupNormProxyAct2d", "ProxyNormAct2d", "block_plan",
    "check_norm", "check_size", "create_model", "fold_for_inference", "gaussian_quantiles", "is_folded",
    "register_norm", "spatial_groups",
]
