"""Where the power terms are measured: forward hooks on a model's norm layers, no model code involved.

Two taps per norm layer (the registry's norm+activation modules, e.g. `BatchNormAct2d`, `GroupNormAct`,
`GroupNormProxyAct2d`):
  norm  the normalized tensor before the affine, recomputed in a forward pre-hook from the layer's input with the
        layer's own statistics and eps (batch statistics for BN in training mode, running ones in eval mode);
        a hook on the output would see the affine (and the activation) already applied;
  act   the layer's output, where it has an activation: after SiLU, after Proxy Norm for the PN norms. The norm
        after each block's project conv has no activation and gives the norm tap only.
Depth is the norm layer's index in the forward pass (stem 0, ..., head last).
"""

import contextlib

import torch
import torch.nn.functional as F
from timm.layers import EvoNorm2dS0
from timm.layers.evo_norm import group_std
from torch import nn

from ..models.norms import check_norm
from ..models.proxy_norm import GroupNormProxyAct2d
from .power import TERMS, power_terms

TAPS = ("norm", "act")
MODES = ("train", "eval")


def _normalized(m: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The layer's normalization of x without its affine; None for a layer type this module does not know."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        batch = m.training or m.running_mean is None
        return F.batch_norm(x, None if batch else m.running_mean, None if batch else m.running_var, None, None,
                            batch, 0.0, m.eps)
    if isinstance(m, (nn.GroupNorm, GroupNormProxyAct2d)):
        return F.group_norm(x, m.num_groups, None, None, m.eps)
    if isinstance(m, EvoNorm2dS0):  # x sigmoid(v x) / group std: gate and division are one step; without the
        if m.v is None:              # activation (apply_act=False) the layer is an affine alone
            return x
        return x * (x * m.v.view(1, -1, 1, 1)).sigmoid() / group_std(x, m.groups, m.eps)
    return None


def _has_act(m: nn.Module) -> bool:
    if isinstance(m, GroupNormProxyAct2d):
        return m.pn is not None
    if isinstance(m, EvoNorm2dS0):
        return m.v is not None
    act = getattr(m, "act", None)
    return act is not None and not isinstance(act, nn.Identity)


def norm_layer_types(norm: str) -> set[type]:
    """The module classes the norm registry builds for `norm` (with and without activation)."""
    spec = check_norm(norm)
    with torch.device("meta"):
        return {type(spec.build(16, apply_act=a, act_layer=nn.SiLU)) for a in (True, False)}


def norm_layers(model: nn.Module, norm: str | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) of every norm layer, in module order: those of `norm`'s registry types (default: the
    model's `norm` attribute)."""
    norm = norm if norm is not None else getattr(model, "norm", None)
    if norm is None:
        raise ValueError("norm_layers: the model has no `norm` attribute; pass norm=<a registry name>")
    types = norm_layer_types(norm)
    return [(n, m) for n, m in model.named_modules() if type(m) in types]


@contextlib.contextmanager
def _measuring(model: nn.Module, layers, mode: str):
    """Eval mode everywhere (no dropout or stochastic depth), the norm layers in `mode`; afterwards every module's
    mode and every norm layer's buffers (BN's running statistics) are as they were."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {', '.join(MODES)}")
    flags = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for _, m in layers for b in m.buffers(recurse=False)]
    model.eval()
    for _, m in layers:
        m.train(mode == "train")
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def diagnose_model(model: nn.Module, x: torch.Tensor, mode: str = "train", norm: str | None = None,
                   per_channel: bool = False) -> list[dict]:
    """One forward of `x` through `model` with hooks on its norm layers; one row per tap: depth, layer, tap,
    channels, height, width, the three terms and `power` (floats; (C,) fp64 tensors with `per_channel`). `mode`:
    "train" = the norm layers compute batch statistics (BN; the others have none), "eval" = running statistics;
    dropout and stochastic depth are off in both. The model's modes and buffers are left as they were."""
    layers = norm_layers(model, norm)
    rows, handles, unknown = [], [], []

    def record(depth, name, tap, y):
        t = power_terms(y, per_channel)
        rows.append(dict(depth=depth, layer=name, tap=tap, channels=y.shape[1], height=y.shape[2], width=y.shape[3],
                         **{k: t[k] if per_channel else float(t[k]) for k in (*TERMS, "power")}))

    for depth, (name, m) in enumerate(layers):
        def pre(mod, args, depth=depth, name=name):
            y = _normalized(mod, args[0])
            if y is None:
                unknown.append(type(mod).__name__)
            else:
                record(depth, name, "norm", y)

        def post(mod, args, out, depth=depth, name=name):
            record(depth, name, "act", out)

        handles.append(m.register_forward_pre_hook(pre))
        if _has_act(m):
            handles.append(m.register_forward_hook(post))
    try:
        with _measuring(model, layers, mode), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if unknown:
        print(f"note: no norm tap for {sorted(set(unknown))} (diagnostics.taps knows BatchNorm, GroupNorm, "
              "Proxy Norm and EvoNorm-S0 layers); their act taps are recorded")
    return sorted(rows, key=lambda r: (r["depth"], TAPS.index(r["tap"])))
