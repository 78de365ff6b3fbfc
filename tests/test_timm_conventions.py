"""The registered names behave as timm models in every way timm's own model tests look at: the pretrained_cfg and
head attributes, classifier and pooling resets, forward_features / forward_head(pre_logits), every features_only
wrapper, forward_intermediates and pruning, gradient checkpointing, TorchScript, and torch.fx symbolic tracing
(plain, torchvision's and timm's feature extraction) running the same code as eager, CPU kernel included.
Small inputs (32 px) except where the configured input size itself is the check."""

import math
import warnings

import pytest
import timm
import torch
from timm.models import FeatureGraphNet, FeatureHookNet, get_notrace_functions, get_notrace_modules
from timm.models._features import FeatureGetterNet
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import g16net  # noqa: F401  (registers the names)
from g16net.models import cpu_kernel
from g16net.models.timm_registry import FeatureList

# Every check runs on both names and on BN; the heavier checks (feature wrappers, intermediates, checkpointing,
# TorchScript, fx) run fast only on G16 LN+PN, the others in the slow suite: the code under test is the same.
CASES = [("g16_efficientnet_b0", "ln_pn"), ("g1_efficientnet_b0", "ln_pn"), ("g16_efficientnet_b0", "bn")]
HEAVY = [CASES[0], *(pytest.param(*c, marks=pytest.mark.slow) for c in CASES[1:])]
X = torch.randn(2, 3, 32, 32)


def _make(name, norm, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, norm=norm, **kw)


def _nonzero_affine(model):
    """Random norm affines and proxies: at their init values some paths agree by accident."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in n or ".bn" in n):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name, norm", CASES)
def test_pretrained_cfg_and_head_attributes(name, norm):
    model = _make(name, norm).eval()
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    assert cfg == timm.models.get_pretrained_cfg(name).to_dict()  # what timm resolves from the name alone
    assert name not in timm.list_pretrained()  # no weights exist, and timm knows it
    assert model.num_classes == cfg["num_classes"] == model.get_classifier().out_features == 1000
    assert model.num_features == model.head_hidden_size == 1280
    keys = model.state_dict().keys()
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in keys
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == cfg["input_size"] == (3, 224, 224) and data["interpolation"] == "bicubic"
    with torch.no_grad():  # at the configured input size, the unpooled map is pool_size
        x = torch.randn(1, *cfg["input_size"])
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, *cfg["pool_size"])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    b3 = timm.models.get_pretrained_cfg("g16_efficientnet_b3")
    assert b3.input_size == (3, 300, 300) and b3.pool_size == (math.ceil(300 / 32),) * 2


@pytest.mark.parametrize("name, norm", CASES)
def test_reset_classifier_and_global_pool(name, norm):
    model = _make(name, norm).eval()
    with torch.no_grad():
        feats = model.forward_features(X)
        pooled = model.forward_head(feats, pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(X), pooled)  # no classifier: the pre-logits
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(X), feats)  # no pooling either: the unpooled map
        model.reset_classifier(7, "avg")
        assert model.num_classes == 7 and model(X).shape == (2, 7)
        bare = _make(name, norm, num_classes=0, global_pool="").eval()
        assert bare(X).shape == feats.shape and bare.num_classes == 0
    with pytest.raises(ValueError, match="num_classes=-1 must be >= 0"):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name, norm", CASES)
def test_backward_reaches_every_parameter(name, norm):
    model = _make(name, norm, num_classes=42).train()
    out = model(X)
    out.mean().backward()
    assert out.shape == (2, 42) and not out.isnan().any()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name, norm", HEAVY)
def test_every_features_only_wrapper_gives_the_same_maps(name, norm):
    ref = _nonzero_affine(_make(name, norm)).eval()
    with torch.no_grad():
        final, maps = ref.forward_intermediates(X)
    info = ref.feature_info
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in info]
    assert [32 // m.shape[-1] for m in maps] == [f["reduction"] for f in info]
    for cls, wrapper in (("list", FeatureList), ("getter", FeatureGetterNet), ("hook", FeatureHookNet),
                         ("fx", FeatureGraphNet)):
        # Same seed, same construction: ref's weights (the wrappers drop only layers after the last map taken).
        feat = _nonzero_affine(_make(name, norm, features_only=True, feature_cls=cls, out_indices=(1, 3, 4))).eval()
        assert isinstance(feat, wrapper), cls
        assert feat.default_cfg["input_size"] == (3, 224, 224)  # timm's feature tests size inputs from it
        assert feat.feature_info.channels() == [info[i]["num_chs"] for i in (1, 3, 4)]
        with torch.no_grad():
            out = feat(X)
        out = list(out.values()) if isinstance(out, dict) else out
        for a, b in zip(out, [maps[i] for i in (1, 3, 4)], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=cls)


@pytest.mark.parametrize("name, norm", HEAVY)
def test_forward_intermediates_and_pruning(name, norm):
    model = _make(name, norm).eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(X)
        torch.testing.assert_close(final, model.forward_features(X))
        last2 = model.forward_intermediates(X, indices=2, intermediates_only=True)
        assert [m.shape for m in last2] == [m.shape for m in maps[-2:]]
        early, two = model.forward_intermediates(X, indices=[0, 2], stop_early=True)
        torch.testing.assert_close(early, maps[2])  # stopped after stage 2: neither later stages nor the head ran
        assert model.prune_intermediate_layers([0, 2]) == [0, 2]
        assert len(model.blocks) == 3 and model.num_classes == 0 and model.num_features == 40
        for a, b in zip(model.forward_intermediates(X, indices=[0, 2], intermediates_only=True), two, strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="output_fmt='NHWC'; allowed: 'NCHW'"):
        model.forward_intermediates(X, output_fmt="NHWC")


@pytest.mark.parametrize("name, norm", HEAVY)
def test_grad_checkpointing_same_output_and_gradients(name, norm):
    model = _nonzero_affine(_make(name, norm, num_classes=5, drop_rate=0.0, drop_path_rate=0.0)).train()
    x = X

    def run():
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    y0, g0 = run()
    model.set_grad_checkpointing()
    y1, g1 = run()
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.forward_intermediates(x)[0], model.forward_features(x), rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    groups = timm.models.group_parameters(model, model.group_matcher())  # timm's layer-wise lr decay groups
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


@pytest.mark.parametrize("name, norm", HEAVY)
def test_torchscript(name, norm):
    model = _make(name, norm).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit's deprecation notice
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(X), model(X), rtol=1e-4, atol=1e-4)


def _timm_tracer_kwargs():
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


@pytest.mark.parametrize("name, norm", HEAVY)
def test_fx_graphs_run_what_eager_runs(name, norm):
    """Plain symbolic_trace, torchvision's feature extractor (no leaf list) and timm's (its leaf list): in
    inference each equals eager bit for bit and runs the CPU kernel where eager does; in training each gives
    eager's gradients; timm's graph scripts."""
    model = _nonzero_affine(_make(name, norm, num_classes=5, drop_rate=0.0, drop_path_rate=0.0)).eval()
    plain = torch.fx.symbolic_trace(model)
    vision = create_feature_extractor(model, {"blocks.2": "s8", "classifier": "logits"})
    nodes = get_graph_node_names(model, tracer_kwargs=_timm_tracer_kwargs())[1]
    with_leaves = create_feature_extractor(model, {nodes[-1]: "logits"}, tracer_kwargs=_timm_tracer_kwargs())
    if norm.endswith("_pn"):
        assert "_untraced_layer" in plain.code  # a PN layer is one opaque call in generic graphs...
        assert "self.norm_stem(" in with_leaves.code  # ... and one call of the leaf module in timm's
    with torch.inference_mode():
        with _OpLog() as eager_ops:
            ref = model(X)
        with _OpLog() as traced_ops:
            out = plain(X)
        assert torch.equal(out, ref)
        assert torch.equal(vision(X)["logits"], ref) and torch.equal(with_leaves(X)["logits"], ref)
    kernel = norm.endswith("_pn") and cpu_kernel.ops() is not None
    assert ("g16net_pn.forward" in eager_ops.ops) == kernel == ("g16net_pn.forward" in traced_ops.ops)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit's deprecation notice
        torch.testing.assert_close(torch.jit.script(with_leaves)(X)["logits"], ref, rtol=1e-4, atol=1e-4)

    model.train()
    grads = []
    for net in (model, torch.fx.symbolic_trace(model)):
        model.zero_grad()
        net(X).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_timm_options_reach_the_model_and_mistakes_are_named():
    model = timm.create_model("g16_efficientnet_b0", in_chans=1, num_classes=3, drop_rate=0.0)
    assert model.conv_stem.in_channels == 1 and model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="size='b3' conflicts with the name; use g16_efficientnet_b3"):
        timm.create_model("g16_efficientnet_b0", size="b3")
    with pytest.raises(ValueError, match=r"out_indices=6; allowed: .* a count 1\.\.5"):
        timm.create_model("g1_efficientnet_b0", features_only=True, feature_cls="getter", out_indices=6)
