"""The power analysis (g16net.diagnostics, python -m g16net.diagnose): the decomposition is exact, each norm's
tap shows what that norm guarantees, the hooks change nothing, and the CLI and the per-epoch record write their
files. G16-B0 at 64 px (the last maps 2x2), batches of a few images."""

import csv

import pytest
import torch
from omegaconf import OmegaConf

import g16net
from g16net import diagnose
from g16net.checks.config_check import check_config
from g16net.core.config import ConfigError
from g16net.diagnostics import TERMS, diagnose_model, norm_layers, power_terms, summary
from g16net.run.runner import DIAGNOSTICS_CSV, run

from .conftest import TINY, compose_cfg

X = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _model(norm, eps=None):
    """G16-B0 at initialization; eps: every norm layer's, ~0 so a norm's ideal output holds to fp32 rounding."""
    torch.manual_seed(0)
    model = g16net.create_model("b0", norm=norm, num_classes=5)
    for _, m in norm_layers(model) if eps is not None else ():
        m.eps = eps
    return model


def _norm_taps(model, x, **kw):
    return [r for r in diagnose_model(model, x, **kw) if r["tap"] == "norm"]


@pytest.mark.parametrize("shift", [0.0, 5.0])
def test_terms_sum_to_the_power_and_follow_their_definitions(shift):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(7, 5, 3, 4, generator=g) + torch.randn(1, 5, 1, 1, generator=g) * 2 \
        + torch.randn(7, 5, 1, 1, generator=g) + shift
    t = power_terms(y)
    assert float(sum(t[k] for k in TERMS)) == pytest.approx(float(t["power"]), rel=1e-5)
    y64 = y.double()
    mu_nc = y64.mean((2, 3))  # the definitions, with population variances
    assert float(t["channel_mean"]) == pytest.approx(float(y64.mean((0, 2, 3)).square().mean()), rel=1e-6)
    assert float(t["instance_mean"]) == pytest.approx(float(mu_nc.var(0, unbiased=False).mean()), rel=1e-6)
    assert float(t["within_instance"]) == pytest.approx(float(y64.var((2, 3), unbiased=False).mean()), rel=1e-6)
    assert float(t["power"]) == pytest.approx(float(y64.square().mean()), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) tensor, got shape \(7, 5\)"):
        power_terms(y[:, :, 0, 0])


def test_every_tap_of_a_model_sums_to_its_power():
    rows = diagnose_model(_model("ln_pn"), X)
    assert {r["tap"] for r in rows} == {"norm", "act"}
    for r in rows:
        assert sum(r[k] for k in TERMS) == pytest.approx(r["power"], rel=1e-5)


def test_batchnorm_in_train_mode_zero_channel_means_unit_channel_variances():
    rows = _norm_taps(_model("bn", eps=1e-9), X, mode="train", per_channel=True)
    assert len(rows) == 49  # every norm layer of G16-B0
    for r in rows:
        assert r["channel_mean"].abs().max() < 1e-8
        torch.testing.assert_close(r["instance_mean"] + r["within_instance"], torch.ones(r["channels"]).double(),
                                   atol=1e-5, rtol=0)


def test_batchnorm_in_eval_mode_uses_running_statistics():
    rows = _norm_taps(_model("bn", eps=1e-9), X, mode="eval")  # fresh running stats: mean 0, var 1 = the input
    assert max(r["channel_mean"] for r in rows) > 1e-3


def test_layernorm_gives_every_sample_unit_power():
    model = _model("ln", eps=1e-9)
    for n in range(len(X)):  # a batch of one: the power over (C, H, W) of that sample
        for r in _norm_taps(model, X[n:n + 1]):
            assert r["power"] == pytest.approx(1.0, abs=1e-5), (n, r["layer"])


def test_instance_norm_leaves_only_within_instance_power():
    for r in _norm_taps(_model("in", eps=1e-9), X):
        assert r["channel_mean"] < 1e-8 and r["instance_mean"] < 1e-8, r["layer"]
        assert r["within_instance"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("norm", ["bn", "ln_pn", "ln_ws"])
def test_hooks_leave_outputs_modes_and_statistics_unchanged(norm):
    model = _model(norm).train()
    seen = []
    handle = model.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    diagnose_model(model, X, mode="train")
    handle.remove()
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())
    model.eval()  # the same modes as the measurement, without hooks: eval, norm layers computing batch statistics
    for _, m in norm_layers(model):
        m.train()
    with torch.no_grad():
        assert torch.equal(seen[0], model(X))


def test_cli_writes_csv_and_figure(tmp_path, capsys):
    out = tmp_path / "init"
    assert diagnose.main(["init", "--norms", "bn,in", "--seeds", "0,1", "--batch", "2", "--res", "32",
                          "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "power.csv").open()))
    assert len(rows) == 2 * 2 * (49 + 33)  # norms x seeds x (49 norm taps + 33 after an activation)
    assert {(r["norm"], r["seed"]) for r in rows} == {("bn", "0"), ("bn", "1"), ("in", "0"), ("in", "1")}
    assert (out / "power.png").stat().st_size > 10_000 and (out / "power.pdf").is_file()
    summary = {(r["norm"], r["tap"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(summary) == {("bn", "norm"), ("bn", "act"), ("in", "norm"), ("in", "act")}
    assert summary[("bn", "norm")]["seeds"] == "2" and float(summary[("bn", "norm")]["channel_mean_share_mean"]) < 1e-6
    assert "each term's share of E[y^2] over the last 5 depths" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        diagnose.main(["init", "--norms", "bn,layer", "--out", str(out)])
    assert e.value.code == 2 and "--norms: unknown ['layer']; allowed: bn, gn, ln" in capsys.readouterr().err


def _row(norm, seed, depth, channel_mean, instance_mean, within, tap="act"):
    return {"norm": norm, "seed": seed, "depth": depth, "tap": tap, "channel_mean": channel_mean,
            "instance_mean": instance_mean, "within_instance": within,
            "power": channel_mean + instance_mean + within}


def test_summary_averages_shares_over_the_deepest_taps_then_over_seeds():
    rows = [_row("ln", 0, 0, 9.0, 0.0, 1.0),  # a shallow tap, outside the deepest 2
            _row("ln", 0, 1, 1.0, 1.0, 2.0), _row("ln", 0, 2, 30.0, 0.0, 10.0),  # shares 1/4 and 3/4 -> 1/2
            _row("ln", 1, 1, 0.0, 1.0, 1.0), _row("ln", 1, 2, 0.0, 0.0, 2.0),  # share 0
            _row("ln", 0, 2, 0.0, 0.0, 0.0, tap="norm")]  # zero power counts as share 0
    by = {(r["norm"], r["tap"]): r for r in summary.deep_shares(rows, deepest=2)}
    ln = by[("ln", "act")]
    assert ln["seeds"] == 2 and ln["channel_mean_share_mean"] == pytest.approx(0.25)
    assert ln["channel_mean_share_std"] == pytest.approx(0.5 ** 0.5 / 2)  # sample std of (0.5, 0)
    assert ln["instance_mean_share_mean"] == pytest.approx((1 / 8 + 1 / 4) / 2)
    assert ln["power_mean"] == pytest.approx((4 + 40 + 2 + 2) / 4)
    assert by[("ln", "norm")]["within_instance_share_mean"] == 0.0
    assert "ln      act        2" in summary.format_summary(list(by.values()), ["ln"])
    with pytest.raises(ValueError, match="deepest must be >= 1"):
        summary.deep_shares(rows, deepest=0)


@pytest.mark.parametrize("override, match", [
    ("diagnostics.every_epoch=maybe", "diagnostics.every_epoch='maybe' is invalid; allowed: true or false"),
    ("diagnostics.batch_size=1", "diagnostics.batch_size=1 is invalid; allowed: an integer >= 2"),
    ("backend=ipu", "diagnostics.every_epoch=true is recorded by backend=lightning only"),
])
def test_bad_diagnostics_config_is_refused(override, match):
    cfg = compose_cfg([*TINY, "diagnostics.every_epoch=true", override])
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)


QUICK_RECORD = [*TINY, "trainer.limit_train_batches=1", "finetune.epochs=0", "eval.before_finetune=false",
                "throughput.enabled=false", "data.synthetic.train_size=32", "data.synthetic.val_size=16",
                "eval.resolutions=[32]", "diagnostics.batch_size=4"]


def _run(tmp_path, record: bool):
    cfg = compose_cfg([*QUICK_RECORD, f"diagnostics.every_epoch={str(record).lower()}"])
    run(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as the Hydra app does (the norm and seed are read)
    return tmp_path


def test_per_epoch_record_in_a_smoke_run_and_its_figure(tmp_path):
    run_dir = _run(tmp_path / "run", record=True)
    rows = list(csv.DictReader((run_dir / DIAGNOSTICS_CSV).open()))
    assert {(r["phase"], r["epoch"]) for r in rows} == {("train", "0"), ("train", "1")}
    assert len(rows) == 2 * (49 + 33)
    after = [r for r in rows if r["epoch"] == "1"]
    assert all(float(r["record_s"]) > 0 and float(r["epoch_s"]) > 0 for r in after)
    out = tmp_path / "figs"
    assert diagnose.main(["epochs", str(run_dir), "--depths", "0,-1", "--out", str(out)]) == 0
    assert (out / "power_epochs.png").is_file() and len(list(csv.DictReader((out / "power_epochs.csv").open())))
    assert [r["seeds"] for r in csv.DictReader((out / "summary.csv").open())] == ["1", "1"]  # norm and act taps


@pytest.mark.slow
def test_the_record_does_not_change_training(tmp_path):
    with_record = torch.load(_run(tmp_path / "a", True) / "checkpoints" / "train.pt", weights_only=True)
    without = torch.load(_run(tmp_path / "b", False) / "checkpoints" / "train.pt", weights_only=True)
    assert all(torch.equal(with_record[k], without[k]) for k in without)
