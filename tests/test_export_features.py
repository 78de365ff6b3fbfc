"""Every norm through torch.export, jit.trace, jit.script and torch.compile (no graph breaks), and the timm
backbone interface (`features_only=True`). Tiny inputs: what is checked is the capture, not the speed."""

import warnings

import pytest
import timm
import torch

import g16net
from g16net.models import NORMS
from g16net.models.timm_registry import FeatureList


def _model(norm):
    torch.manual_seed(0)
    return g16net.create_model("b0", norm=norm, num_classes=5, drop_rate=0.0, drop_path_rate=0.0).eval()


X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("norm", list(NORMS))
def test_export_trace_script_match_eager(norm):
    model = _model(norm)
    with torch.no_grad():
        ref = model(X)
    exported = torch.export.export(model, (X,)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit's deprecation notices
        traced = torch.jit.trace(model, X)
        scripted = torch.jit.script(model)
    with torch.no_grad():
        for captured in (exported, traced, scripted):
            assert torch.allclose(captured(X), ref, atol=1e-4)
        other = torch.randn(2, 3, 32, 32)  # a graph, not a replay of X
        assert torch.allclose(traced(other), model(other), atol=1e-4)
    if norm.endswith("_pn"):  # scripted PN trains through autograd; eager through the recomputing Function
        scripted.train(), model.train()
        g_script = torch.autograd.grad(scripted(X).sum(), list(scripted.parameters()))
        g_eager = torch.autograd.grad(model(X).sum(), list(model.parameters()))
        assert all((a - b).abs().max() <= 1e-4 * (1 + b.abs().max()) for a, b in zip(g_script, g_eager))


@pytest.mark.parametrize("norm", list(NORMS))
def test_compile_has_no_graph_break_in_training(norm):
    """fullgraph=True raises on any graph break; the eager backend checks capture without a C++ compile."""
    torch._dynamo.reset()
    model = _model(norm).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    y = compiled(X)
    y.sum().backward()
    assert model.conv_stem.weight.grad is not None
    if NORMS[norm].batch_independent:
        assert torch.allclose(y, model(X), atol=1e-4)


def test_features_only_gives_timm_style_multiscale_features():
    model = timm.create_model("g16_efficientnet_b0", features_only=True, norm="ln_pn")
    peer = timm.create_model("efficientnet_b0", features_only=True)
    assert model.feature_info.channels() == peer.feature_info.channels() == [16, 24, 40, 112, 320]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.module_name() == peer.feature_info.module_name()
    feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // r, 64 // r) for c, r in
                                               zip(model.feature_info.channels(), model.feature_info.reduction())]
    feats[-1].mean().backward()  # trains as a backbone
    two = timm.create_model("g16_efficientnet_b3", features_only=True, out_indices=(1, 4), norm="gn")
    assert two.feature_info.channels() == [32, 384] and len(two(torch.randn(1, 3, 64, 64))) == 2
    with pytest.raises(ValueError, match=r"out_indices=\(5,\); allowed: indices into the 5 feature levels"):
        timm.create_model("g16_efficientnet_b0", features_only=True, out_indices=(5,))


def test_features_match_the_classifier_models_stages():
    """A trained classifier becomes a backbone by wrapping it (same weights, shared); its maps are the stage outputs,
    batched PN statistics included. (timm's flattening renames `blocks.i.` to `blocks_i.` in the wrapper.)"""
    torch.manual_seed(0)
    full = timm.create_model("g16_efficientnet_b0", norm="ln_pn", num_classes=5)
    feats = FeatureList(full, out_indices=(2,), flatten_sequential=True)
    assert feats.blocks_0[0].conv_dw.weight is full.blocks[0][0].conv_dw.weight
    x = torch.randn(1, 3, 64, 64)
    y = full.norm_stem(full.conv_stem(x))
    for stage in full.blocks[:3]:
        y = stage(y)
    assert torch.allclose(feats(x)[0], y, atol=1e-5)
