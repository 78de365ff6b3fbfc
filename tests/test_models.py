"""The model zoo: sizes against the reference counts, the authors' group rule, norm wiring, batch independence."""

import csv
from importlib.resources import files

import pytest
import timm
import torch
from timm.layers import DropPath
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn

import g16net
from g16net.efficiency.measure import count_params, forward_macs
from g16net.models import NORMS, SIZES, GroupNormProxyAct2d, block_plan

REFERENCE = {r["size"]: r for r in csv.DictReader(files("g16net").joinpath("reference/params_macs.csv").open())}


def _meta_model(**kw):
    with torch.device("meta"):  # shapes only: counting B7 costs nothing
        return g16net.create_model(**kw)


def _spatial_convs(model):
    return [blk.conv_dw for stage in model.blocks for blk in stage]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", ["g1", "g16"])
def test_params_and_macs_match_reference(size, variant):
    ref = REFERENCE[size]
    arch = dict(group_size=1, expand_ratio=6) if variant == "g1" else dict(group_size=16, expand_ratio=4)
    # G16-B6 only exists with the divisor rule (see spatial_groups); everything else is the authors' exact rule.
    rule = "divisor" if (variant, size) == ("g16", "b6") else "authors"
    model = _meta_model(size=size, norm="bn", group_rule=rule, **arch)
    assert count_params(model) == pytest.approx(float(ref[f"{variant}_params"]), rel=1e-3)
    native = int(ref["native_res"])
    assert forward_macs(model, native) / 1e9 == pytest.approx(float(ref[f"{variant}_gmacs_native"]), rel=0.03)
    if variant == "g16" and ref["half_res"]:
        half = forward_macs(model, int(ref["half_res"])) / 1e9
        assert half == pytest.approx(float(ref["g16_gmacs_half"]), rel=0.03)


def test_g1_b0_is_exactly_efficientnet_b0():
    model = g16net.create_model("b0", group_size=1, expand_ratio=6, norm="bn")
    assert count_params(model) == 5_288_548 == count_params(timm.create_model("efficientnet_b0"))


def test_group_rule_of_the_authors():
    b0 = _spatial_convs(g16net.create_model("b0"))
    assert all(c.in_channels // c.groups == 16 for c in b0)  # B0: every width is a multiple of 16
    b3 = _spatial_convs(_meta_model(size="b3"))
    assert (b3[0].in_channels, b3[0].groups) == (40, 2)  # 2 groups of 20
    b1 = _spatial_convs(_meta_model(size="b1"))
    assert (b1[1].in_channels, b1[1].groups) == (16, 1)  # later stage-1 block: a dense 3x3
    g1 = _spatial_convs(_meta_model(size="b0", group_size=1, expand_ratio=6))
    assert all(c.groups == c.in_channels for c in g1)  # depthwise


def test_expansion_se_width_and_drop_schedule():
    model = g16net.create_model("b2", norm="ln_pn", num_classes=10)
    plan = block_plan("b2", 4)
    blocks = [blk for stage in model.blocks for blk in stage]
    assert len(blocks) == len(plan) == 23  # ceil(1.2 * (1, 2, 2, 3, 3, 4, 1))
    for b, blk in zip(plan, blocks):
        assert blk.conv_dw.in_channels == (b["in_chs"] if b["stage"] == 0 else 4 * b["in_chs"])
        assert blk.se.conv_reduce.out_channels == max(1, int(b["in_chs"] * 0.25))  # from the block *input*
        assert isinstance(blk.se, SqueezeExcite) and isinstance(blk.se.act1, nn.SiLU)
    rates = [blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0 for blk in blocks]
    assert rates == pytest.approx([0.2 * i / 23 for i in range(23)])  # the authors' 0.2 * i / N
    assert model.drop_rate == 0.3 and g16net.create_model("b0").drop_rate == 0.2
    assert g16net.create_model("b0", drop_rate=0.0, drop_path_rate=0.0).drop_rate == 0.0


def test_ln_pn_wiring():
    model = g16net.create_model("b0", norm="ln_pn")
    ir = model.blocks[1][0]
    for norm in (model.norm_stem, ir.bn1, ir.bn2, model.norm_head):
        assert isinstance(norm, GroupNormProxyAct2d) and norm.pn is not None and norm.num_groups == 1
    assert ir.bn3.pn is None and [n for n, _ in ir.bn3.named_parameters()] == ["weight"]  # project: scale only
    assert model.blocks[1][0].bn1.pn.eps == 0.03 and model.blocks[1][0].bn1.eps == 1e-3
    assert g16net.create_model("b0", norm="gn_pn").norm_stem.num_groups == 4
    assert g16net.create_model("b0", norm="gn").norm_stem.num_groups == 4


def test_in_and_ln_ws_wiring():
    from timm.layers import StdConv2d

    inorm = _meta_model(norm="in")
    assert all(m.num_groups == m.num_channels for m in (inorm.norm_stem, inorm.blocks[1][0].bn2, inorm.norm_head))
    ws = _meta_model(norm="ln_ws")
    convs = {n: type(m) for n, m in ws.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(t is (nn.Conv2d if ".se." in n else StdConv2d) for n, t in convs.items())  # SE has no norm after it
    assert ws.norm_stem.num_groups == 1 and count_params(ws) == count_params(_meta_model(norm="ln"))


@pytest.mark.parametrize("norm", ["ln_pn", "gn_pn", "bn"])
def test_batch_independence(norm):
    torch.manual_seed(0)
    model = g16net.create_model("b0", norm=norm, num_classes=10, drop_rate=0.0, drop_path_rate=0.0).train()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        y_other = model(torch.cat([x[:2], torch.randn(2, 3, 64, 64) * 3 + 1]))
        y_eval = model.eval()(x)
    same_for_sample = torch.allclose(y[:2], y_other[:2], atol=1e-5)
    train_equals_eval = torch.allclose(y, y_eval, atol=1e-5)
    if NORMS[norm].batch_independent:
        assert same_for_sample and train_equals_eval
    else:  # BatchNorm: the check above can fail, and does
        assert not same_for_sample and not train_equals_eval


@pytest.mark.parametrize("kwargs, match", [
    (dict(size="b9"), "size='b9'; allowed: b0, b1"),
    (dict(norm="bnx"), "norm='bnx'; allowed: bn, gn, ln, ln_pn, gn_pn"),
    (dict(group_size=0), "group_size=0 must be an integer >= 1"),
    (dict(expand_ratio=0.5), "expand_ratio=0.5 must be >= 1"),
    (dict(group_size=12), r"group_size=12 cannot divide .* Allowed group sizes .*\[1, 2, 4, 8, 16,"),
    (dict(size="b6"), r"56-channel .* group_rule='divisor'"),
    (dict(group_rule="nearest"), "group_rule='nearest'; allowed: authors, divisor"),
    (dict(num_classes=-1), "num_classes=-1 must be >= 0"),
    (dict(global_pool="mean"), "global_pool='mean'; allowed: 'avg', 'max'"),
])
def test_bad_arguments_name_the_argument_and_allowed_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        g16net.create_model(**kwargs)


def test_every_norm_trains_a_step():
    for norm in NORMS:
        model = g16net.create_model("b0", norm=norm, num_classes=3)
        # 64 px, not 32: at 32 px the last stages' maps are 1x1, where instance norm outputs its bias alone and
        # no gradient reaches the stem (a property of IN, see the norm registry)
        loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
        loss.backward()
        assert torch.isfinite(loss) and model.conv_stem.weight.grad.abs().sum() > 0


def test_timm_registration():
    names = timm.list_models("g*_efficientnet_*")
    assert {f"{v}_efficientnet_{s}" for v in ("g1", "g16") for s in SIZES} <= set(names)
    model = timm.create_model("g16_efficientnet_b0", norm="gn", num_classes=7)
    assert (model.group_size, model.expand_ratio, model.norm) == (16, 4, "gn")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    g1 = timm.create_model("g1_efficientnet_b0", norm="bn")
    assert (g1.group_size, g1.expand_ratio) == (1, 6) and count_params(g1) == 5_288_548
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("g16_efficientnet_b0", pretrained=True)


@pytest.mark.parametrize("norm", ["bn", "ln_pn"])
def test_zero_init_last_starts_residual_blocks_as_identities(norm):
    torch.manual_seed(0)
    plain = g16net.create_model("b0", norm=norm, num_classes=10, drop_path_rate=0.0).eval()
    torch.manual_seed(0)
    zero = g16net.create_model("b0", norm=norm, num_classes=10, drop_path_rate=0.0, zero_init_last=True).eval()
    skip, other = 0, 0
    for (name, a), b in zip(plain.blocks.named_modules(), zero.blocks.modules()):
        if not hasattr(a, "has_skip"):
            continue
        x = torch.randn(2, a.conv_pw.in_channels if hasattr(a, "conv_pw") else a.conv_dw.in_channels, 8, 8)
        with torch.no_grad():
            if a.has_skip:
                skip += 1
                assert torch.equal(b(x), x), name  # the branch adds exactly zero
                assert not torch.allclose(a(x), x), name
            else:
                other += 1
                torch.testing.assert_close(b(x), a(x))  # blocks without a skip keep the authors' init
    assert skip == 9 and other == 7  # G16-B0: 16 blocks, 9 of them skip-connected
