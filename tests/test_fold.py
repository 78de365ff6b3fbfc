"""`fold_for_inference`: Proxy Norm's post-activation affine folded into the next layer gives the same logits.
Speed is measured by `python -m g16net.bench` (folded rows), never asserted here."""

import csv
import warnings

import pytest
import timm
import torch
from timm.models._efficientnet_blocks import SqueezeExcite

import g16net
from g16net import bench
from g16net.models import GroupNormProxyAct2d, fold_for_inference, is_folded
from g16net.models.fold import AffineInputConv2d, FoldedSqueezeExcite, GroupNormAct2d


def _model(norm, num_classes=7):
    """A B0 whose PN parameters are far from their init, so every affine (a, b) differs from (1, 0) per channel."""
    torch.manual_seed(0)
    model = g16net.create_model("b0", norm=norm, num_classes=num_classes, drop_rate=0.2, drop_path_rate=0.2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _close(out, ref):
    return (out - ref).abs().max().item() <= 1e-4 * (1 + ref.abs().max().item())


@pytest.mark.parametrize("norm", ["ln_pn", "gn_pn"])
def test_folded_logits_match_at_every_size_and_batch(norm):
    model = _model(norm)
    folded = fold_for_inference(model)
    # Every PN layer with an activation was folded (stem, bn1/bn2 of each block, head), so nothing below passes
    # because a fold quietly did not apply; the scale-only norms after the project convs have no affine to fold.
    assert all(m.pn is None for m in folded.modules() if isinstance(m, GroupNormProxyAct2d))
    assert sum(isinstance(m, GroupNormAct2d) for m in folded.modules()) == sum(
        isinstance(m, GroupNormProxyAct2d) and m.pn is not None for m in model.modules())
    # 32 px: 1x1 last maps; 64 px: 2x2 (the small-plane branches); 97 px: odd sizes (uneven stride-2 borders).
    # One folded model over all sizes: the per-size shift maps are cached side by side.
    for res, batch in [(64, 1), (64, 3), (32, 3), (97, 1), (128, 3), (64, 3)]:
        x = torch.randn(batch, 3, res, res)
        with torch.no_grad():
            ref = model(x)
        with torch.inference_mode():
            out = folded(x)
        assert _close(out, ref), (res, batch, (out - ref).abs().max())


def test_folded_model_runs_channels_last():
    """NHWC activations take the SE's generic in-place multiply-add (no (1, N * C, H, W) view of them exists)."""
    model = _model("ln_pn")
    folded = fold_for_inference(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _close(folded(x.contiguous(memory_format=torch.channels_last)), model(x))


def test_folded_backbone_gives_the_same_features():
    """features_only: the folds stay inside the blocks (and stem -> first block), so every stage output matches."""
    torch.manual_seed(0)
    model = timm.create_model("g16_efficientnet_b0", norm="ln_pn", features_only=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
        folded = fold_for_inference(model)
        x = torch.randn(2, 3, 64, 64)
        assert is_folded(folded) and all(_close(a, b) for a, b in zip(folded(x), model(x)))


def test_fold_copies_by_default_and_converts_in_place_when_asked():
    model = _model("ln_pn")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        folded = fold_for_inference(model)
        assert not is_folded(model) and is_folded(folded)
        assert torch.equal(model(x), ref)  # the source model is untouched
        same = fold_for_inference(model, inplace=True)
        assert same is model and is_folded(model) and _close(model(x), ref)


@pytest.mark.parametrize("k, stride, groups, size", [(3, 1, 4, 9), (5, 2, 6, 9), (5, 2, 6, 8), (3, 2, 1, 2),
                                                     (5, 1, 12, 1)])
def test_conv_fold_is_exact_on_the_borders(k, stride, groups, size):
    """conv(a z + b) with zero padding: the shift map carries the partial sums where windows read the padding."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(12, 12, k, stride, k // 2, groups=groups, bias=True)
    a, b = torch.rand(12, dtype=torch.float64) + 0.5, torch.randn(12, dtype=torch.float64)
    folded = AffineInputConv2d(conv, a, b)
    z = torch.randn(2, 12, size, size)
    with torch.no_grad():
        ref = conv(z * a.float().view(1, -1, 1, 1) + b.float().view(1, -1, 1, 1))
        assert torch.allclose(folded(z), ref, atol=1e-5)


@pytest.mark.parametrize("size", [2, 8])  # below and above the channel-affine kernel's small-plane switch
def test_se_fold_is_exact(size):
    torch.manual_seed(2)
    se = SqueezeExcite(16, rd_channels=4)
    a, b = torch.rand(16, dtype=torch.float64) + 0.5, torch.randn(16, dtype=torch.float64)
    folded = FoldedSqueezeExcite(se, a, b)
    z = torch.randn(3, 16, size, size)
    with torch.no_grad():
        ref = se(z * a.float().view(1, -1, 1, 1) + b.float().view(1, -1, 1, 1))
        assert torch.allclose(folded(z.clone()), ref, atol=1e-5)


def test_fold_refuses_training_mode_and_the_folded_model_refuses_to_train():
    model = _model("ln_pn").train()
    with pytest.raises(ValueError, match="needs an eval model"):
        fold_for_inference(model)
    folded = fold_for_inference(model.eval())
    with pytest.raises(RuntimeError, match="cannot train"):
        folded.train()
    with pytest.raises(ValueError, match="unknown folds"):
        fold_for_inference(model, folds=("head", "bias"))


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_fold_is_a_no_op_without_proxy_norm(norm):
    model = _model(norm)
    folded = fold_for_inference(model)
    assert not is_folded(folded)
    assert [type(m) for m in folded.modules()] == [type(m) for m in model.modules()]
    ref_state, state = model.state_dict(), folded.state_dict()
    assert ref_state.keys() == state.keys() and all(torch.equal(ref_state[k], state[k]) for k in state)


def test_partial_folds_match_too():
    """Each fold kind alone is exact as well (the bench compares them; the default applies all three)."""
    model = _model("ln_pn")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for folds in [("head",), ("se",), ("conv",)]:
            assert _close(fold_for_inference(model, folds=folds)(x), ref), folds


def test_folded_model_traces_and_exports():
    model = _model("ln_pn", num_classes=5)
    folded = fold_for_inference(model)
    x, other = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, ref_other = model(x), model(other)
    exported = torch.export.export(folded, (x,)).module()
    # Export computed the shift maps in the graph: the eager cache holds no fake tensors. (jit.trace's check run is
    # eager and may fill it, with real tensors.)
    assert all(not m._maps for m in folded.modules() if isinstance(m, AffineInputConv2d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit's deprecation notices
        traced = torch.jit.trace(folded, x)
    symbolic = torch.fx.symbolic_trace(folded)  # each folded layer is one node calling it, as the PN layers
    assert {n.target.__name__ for n in symbolic.graph.nodes if n.op == "call_function"} >= {"_untraced_layer"}
    with torch.no_grad():
        for captured in (exported, traced, symbolic):
            assert _close(captured(x), ref) and _close(captured(other), ref_other)  # a graph, not a replay


def test_bench_measures_the_folded_model_in_inference_rows_only(tmp_path):
    out = tmp_path / "bench.csv"
    rc = bench.main(["--norms", "ln,ln_pn", "--pn-impl", "fused,folded", "--peers", "efficientnet_b0",
                     "--base", "ln", "--res", "32", "--batch", "2", "--warmup", "1", "--steps", "1",
                     "--repeats", "1", "--num-classes", "10", "--csv", str(out)])
    assert rc == 0
    rows = [(r["model"], r["mode"]) for r in csv.DictReader(out.open()) if r["norm"] == "ln_pn"]
    assert rows == [("g16_efficientnet_b0 [fused]", "train"), ("g16_efficientnet_b0 [fused]", "infer"),
                    ("g16_efficientnet_b0 [folded]", "infer")]
