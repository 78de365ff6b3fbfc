"""Parameter/MAC counting, the throughput protocol and the `python -m g16net.bench` command, on tiny inputs.
Speed itself is measured by the bench, never asserted."""

import csv

import pytest
import torch
from torch import nn

import g16net
from g16net import bench
from g16net.efficiency.measure import count_params, forward_macs, measure_throughput, saved_activation_bytes


def test_grouped_conv_macs_count_per_group():
    conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=2, bias=False))
    assert forward_macs(conv, 8, in_chans=32) == 32 * 16 * 9 * 8 * 8  # out ch x in ch per group x k^2 x output pixels
    assert count_params(conv) == 32 * 16 * 9


def test_macs_per_image_leave_out_parameter_only_statistics():
    """Proxy Norm's statistics depend on the weights only (computed once at inference), so G16-B0 with LN+PN costs
    the MACs of the same model with plain LN (0.635 GMACs at 224 px: spec section 1, G16-B0 @native)."""
    ln, pn = (forward_macs(g16net.create_model(norm=n), 224) for n in ("ln", "ln_pn"))
    assert pn == ln
    assert ln / 1e9 == pytest.approx(0.635, abs=5e-4)


def test_throughput_protocol_leaves_the_model_untouched():
    model = g16net.create_model(norm="ln_pn", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = measure_throughput(model, 32, batch_size=2, mode="train", warmup=1, steps=1)
    infer = measure_throughput(model, 32, batch_size=2, mode="infer", warmup=1, steps=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert train.img_per_s > 0 and infer.img_per_s > 0 and train.activation_mb > 0 and infer.activation_mb == 0
    assert train.peak_mem_mb is None  # CPU: no allocator statistics, reported as such rather than invented
    with pytest.raises(ValueError, match="mode='eval'; allowed: train, infer"):
        measure_throughput(model, 32, 2, mode="eval")
    with pytest.raises(ValueError, match="precision='fp8'"):
        measure_throughput(model, 32, 2, precision="fp8")


def test_g16_keeps_fewer_activations_than_depthwise_g1():
    """The paper's memory argument: expansion 4 instead of 6 shrinks what backward must keep."""
    x = torch.randn(2, 3, 64, 64)
    g16 = saved_activation_bytes(g16net.create_model("b0", 16, 4, "bn").train(), x)
    g1 = saved_activation_bytes(g16net.create_model("b0", 1, 6, "bn").train(), x)
    assert g16 < 0.85 * g1


def test_bench_cli_prints_and_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    rc = bench.main(["--norms", "ln,ln_pn", "--pn-impl", "fused,aten,reference", "--peers", "efficientnet_b0",
                     "--res", "32", "--batch", "2", "--warmup", "1", "--steps", "1", "--repeats", "1",
                     "--num-classes", "10", "--csv", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ratio = img/s / efficientnet_b0" in printed and "[reference]" in printed and "[aten]" in printed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 5  # (peer, ln, ln_pn fused, aten and reference) x (train, infer)
    assert {r["norm"] for r in rows} == {"-", "ln", "ln_pn"}
    peer = [r for r in rows if r["model"] == "efficientnet_b0"]
    assert all(float(r["ratio"]) == 1.0 for r in peer)
    ours = [r for r in rows if r["norm"] == "ln_pn"]
    assert all(float(r["GMACs"]) > float(peer[0]["GMACs"]) for r in ours)  # G16 costs more MACs than G1


def test_bench_base_prices_proxy_norm_against_plain_ln(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    rc = bench.main(["--norms", "ln,ln_pn", "--peers", "efficientnet_b0", "--base", "ln", "--res", "32",
                     "--batch", "2", "--warmup", "1", "--steps", "1", "--repeats", "3", "--modes", "train",
                     "--num-classes", "10", "--csv", str(out)])
    assert rc == 0 and "ratio = img/s / ln" in capsys.readouterr().out
    rows = {r["norm"]: r for r in csv.DictReader(out.open())}
    assert float(rows["ln"]["ratio"]) == 1.0
    assert float(rows["ln"]["ratio_lo"]) == float(rows["ln"]["ratio_hi"]) == 1.0 and rows["ln"]["range"] == "1.00-1.00"
    for norm in ("-", "ln_pn"):
        r = rows[norm]
        assert float(r["ratio"]) == pytest.approx(float(r["img/s"]) / float(rows["ln"]["img/s"]))
        # The ratio of medians lies within the per-repeat (paired) ratios, whatever the machine did.
        assert float(r["ratio_lo"]) <= float(r["ratio"]) * (1 + 1e-9) and float(r["ratio"]) <= float(
            r["ratio_hi"]) * (1 + 1e-9)
        assert r["range"] == f"{float(r['ratio_lo']):.2f}-{float(r['ratio_hi']):.2f}"


# One model, no peer, 32 px, batch 2: each path runs for real in a second or so; torch.compile takes far longer.
TINY_BENCH = ["--norms", "ln_pn", "--pn-impl", "fused", "--peers", "", "--res", "32", "--batch", "2", "--warmup",
              "1", "--steps", "1", "--repeats", "1", "--num-classes", "10"]


@pytest.mark.parametrize("flags, want", [
    (["--layout", "nhwc", "--precision", "bf16"], ("nhwc", "bf16", 0)),
    pytest.param(["--compile", "1", "--modes", "infer"], ("nchw", "fp32", 1), marks=pytest.mark.slow),
])
def test_bench_layout_precision_and_compile_paths_run(flags, want, capsys):
    rows = bench.run(bench.parse_args([*TINY_BENCH, *flags]))
    modes = ["infer"] if "--modes" in flags else ["train", "infer"]
    assert [(r["mode"], r["layout"], r["prec"], r["comp"]) for r in rows] == [(m, *want) for m in modes]
    assert all(r["img/s"] > 0 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--norms", "ln,ln_pn", "--base", "gn"], "--base 'gn' is neither a peer nor a norm of this run"),
    (["--norms", "batchnorm"], "--norms: unknown ['batchnorm']; allowed: bn, gn, ln, ln_pn, gn_pn"),
    (["--models", "resnet9000"], "unknown model 'resnet9000'"),
    (["--res", "16"], "--res values must be >= 32"),
    (["--precision", "fp64"], "--precision: unknown ['fp64']"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_bench_help_explains_every_flag(capsys):
    import re

    from g16net.bench import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    flags = re.findall(r"^  (--[a-z-]+)", text, flags=re.M)
    assert len(flags) >= 15
    for flag in flags:  # every option line (or the line after it) carries a description
        block = text.split(flag, 1)[1].split("\n  --", 1)[0]
        assert len(re.sub(r"[A-Z_]+", "", block).strip()) > 10, flag


def test_bench_csv_keeps_the_rows_measured_before_a_failure(tmp_path, monkeypatch):
    """Rows reach --csv as they are measured: a bench stopped part-way (here: out of memory at the second
    resolution) leaves the first resolution's rows, not an empty or missing file."""
    from g16net.efficiency import bench as grid

    real = grid.measure_throughput

    def measure(model, res, *a, **k):
        if res == 40:
            raise MemoryError("out of memory (simulated)")
        return real(model, res, *a, **k)

    monkeypatch.setattr(grid, "measure_throughput", measure)
    out = tmp_path / "bench.csv"
    with pytest.raises(MemoryError):
        bench.main(["--norms", "ln", "--peers", "", "--res", "32,40", "--batch", "2", "--warmup", "1", "--steps", "1",
                    "--repeats", "1", "--num-classes", "10", "--csv", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [(r["res"], r["mode"]) for r in rows] == [("32", "train"), ("32", "infer")]
    assert all(float(r["img/s"]) > 0 and r["threads"] for r in rows)


def test_saved_activation_bytes_frees_the_activations():
    """The count must not keep the forward's tensors alive (a pack hook returning its input did: an output saved
    by its own op formed a reference cycle, and a bench run grew to 11 GB)."""
    import gc
    import weakref

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    seen = []
    model[1].register_forward_hook(lambda m, i, out: seen.append(weakref.ref(out)))
    assert saved_activation_bytes(model.train(), torch.randn(2, 3, 8, 8)) > 0
    gc.collect()
    assert seen and seen[0]() is None
