"""MARViN per-operand words: activations and gradients get their own word from their own SQNR
(a constructed case with an independent NumPy reference), the layers run at those words, the
config validates the new fields, and the seed-claims cost verdicts use the speed-up."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from quantize.marvin import (
    MarvinConfig,
    MarvinConfigError,
    PrecisionController,
    attach,
    frac_bits_for,
    marvin_layers,
    quantize_fixed,
)
from quantize.marvin.controller import USAGE_COLUMNS
from quantize.marvin.fixed_point import SqnrMeter

OWN = {"activations": "own", "gradients": "own"}


def gauss(shape, seed):
    return torch.from_numpy(np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32))


def heavy(shape, seed):  # Student-t(2): max|x| far out in the tail, needs a wide word
    return torch.from_numpy((np.random.default_rng(seed).standard_t(2, shape) * 0.01)
                            .astype(np.float32))


def ref_sqnr(xs: list[torch.Tensor], wl: int) -> float:
    """Independent: SQNR pooled over `xs`, each rounded to nearest with FL fitted to its own
    max|x| (plain NumPy)."""
    sig = noise = 0.0
    for x in xs:
        v = x.double().numpy().ravel()
        step = 2.0 ** -frac_bits_for(np.abs(v).max(), wl)
        q = np.clip(np.rint(v / step), -2 ** (wl - 1), 2 ** (wl - 1) - 1) * step
        sig, noise = sig + (v ** 2).sum(), noise + ((v - q) ** 2).sum()
    return np.inf if noise == 0 else 10 * np.log10(sig / noise)


def ref_word(xs: list[torch.Tensor], menu, floor_db: float = 20.0) -> int:
    """The smallest menu word whose pooled SQNR (`ref_sqnr`) reaches the floor."""
    return next((wl for wl in menu if ref_sqnr(xs, wl) >= floor_db), menu[-1])


def setup(cfg: MarvinConfig):
    torch.manual_seed(0)
    lin = nn.Linear(512, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(gauss((64, 512), 1))  # Gaussian weights: 6 bits at 20 dB
    model = nn.Sequential(lin)
    formats = attach(model, cfg)
    ctl = PrecisionController(formats, marvin_layers(model), cfg)
    ctl.start()
    return model, lin, formats["0"], ctl


def batch(model, ctl, it, x, g):
    model.train()
    x = x.clone().requires_grad_(True)
    model(x).backward(g)
    ctl.after_step(it, len(x))
    return x


def test_activation_word_is_wider_than_the_weight_word_and_the_layer_uses_it():
    cfg = MarvinConfig(**OWN, lookback_batches=2, gradient_rounding="nearest")
    model, lin, fmt, ctl = setup(cfg)
    assert fmt.word_bits == fmt.act_bits == fmt.grad_bits == 6  # the weight's until measured
    x1, g1 = heavy((16, 512), 2), gauss((16, 64), 3)
    batch(model, ctl, 1, x1, g1)  # first operand decision after one batch
    h = ctl.history()
    assert h["reason"].iloc[-1] == "operands_only" and fmt.word_bits == 6
    assert fmt.act_bits == ref_word([x1], cfg.word_bits_menu) > fmt.word_bits
    assert fmt.grad_bits == ref_word([g1], cfg.word_bits_menu)
    assert h["act_reason"].iloc[-1] == h["grad_reason"].iloc[-1] == "init"
    # the next batch runs at those words: forward and both backward products
    x2, g2 = heavy((16, 512), 4), gauss((16, 64), 5)
    xr = x2.clone().requires_grad_(True)
    lin.weight.grad = None
    y = model(xr)
    wq = quantize_fixed(lin.weight.detach(), 6, fmt.frac_bits)
    a, gb = fmt.act_bits, fmt.grad_bits
    xq = quantize_fixed(x2, a, frac_bits_for(float(x2.abs().max()), a))
    torch.testing.assert_close(y, xq @ wq.T, rtol=0, atol=0)
    y.backward(g2)
    gq = quantize_fixed(g2, gb, frac_bits_for(float(g2.abs().max()), gb))
    torch.testing.assert_close(xr.grad, gq @ wq, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lin.weight.grad, gq.T @ xq, rtol=1e-6, atol=1e-7)
    # the window pools its batches (x2 seen above, x3 here; x1 was reset by the first decision)
    x3, g3 = heavy((16, 512), 6), gauss((16, 64), 7)
    before = fmt.act_bits
    batch(model, ctl, 2, x3, g3)
    h = ctl.history().iloc[-1]
    assert h["act_sqnr_db"] == pytest.approx(ref_sqnr([x2, x3], before), rel=1e-9)
    assert ref_word([x2, x3], cfg.word_bits_menu) < before  # narrower: waits (hysteresis 2)
    assert h["act_reason"] == "hysteresis" and fmt.act_bits == before
    u = ctl.usage()
    assert set(zip(u["act_bits"], u["grad_bits"])) == {(6, 6), (fmt.act_bits, fmt.grad_bits)}
    assert not u["act_float"].any() and not u["grad_float"].any()


def test_gradient_word_switches_on_its_own_with_hysteresis():
    cfg = MarvinConfig(**OWN, lookback_batches=2)  # stochastic gradient rounding (default)
    model, lin, fmt, ctl = setup(cfg)
    x = gauss((16, 512), 2)
    it = 0

    def window(g):
        nonlocal it
        for _ in range(2):
            it += 1
            batch(model, ctl, it, x, g)
        return fmt.word_bits, fmt.act_bits, fmt.grad_bits

    calm = gauss((16, 64), 3)
    spiky = heavy((16, 64), 4)
    w0, a0, g0 = window(calm)
    assert g0 <= 8
    w1, a1, g1 = window(spiky)  # a heavy-tailed gradient needs a wider word: up at once
    assert (w1, a1) == (w0, a0) and g1 > g0
    assert ctl.history()["grad_reason"].iloc[-1] == "up"
    w2, a2, g2 = window(calm)  # back down only after two narrower proposals
    assert g2 == g1 and ctl.history()["grad_reason"].iloc[-1] == "hysteresis"
    w3, a3, g3 = window(calm)
    assert g3 == g0 and ctl.history()["grad_reason"].iloc[-1] == "down"
    assert (w3, a3) == (w0, a0)
    # every decision is one history row with both operands' words
    h = ctl.history()
    assert h[["act_word_bits", "grad_word_bits"]].notna().all().all()
    assert list(h["iteration"]) == [0, 1, 2, 4, 6, 8]


def test_meter_pools_tensors_and_stochastic_rounding_is_noisier():
    x = gauss((4096,), 0)
    near, stoch = SqnrMeter((4, 8)), SqnrMeter((4, 8), "stochastic",
                                              torch.Generator().manual_seed(0))
    for m in (near, stoch):
        m.add(x[:2048])
        m.add(x[2048:] * 3)
    sig = noise = 0.0
    for v in (x[:2048].double().numpy(), 3 * x[2048:].double().numpy()):  # NumPy reference
        step = 2.0 ** -frac_bits_for(np.abs(v).max(), 4)
        sig += (v ** 2).sum()
        noise += ((v - np.clip(np.rint(v / step), -8, 7) * step) ** 2).sum()
    assert near.sqnr_db()[4] == pytest.approx(10 * np.log10(sig / noise), rel=1e-9)
    assert near.tensors == 2 and near.sqnr_db()[8] > near.sqnr_db()[4]
    assert stoch.sqnr_db()[4] < near.sqnr_db()[4]  # ~ step^2/6 vs step^2/12 noise
    near.reset()
    assert near.tensors == 0 and near.signal == 0.0 and near.sqnr_db()[4] == 0.0


def test_evaluation_does_not_feed_the_meters():
    cfg = MarvinConfig(**OWN)
    model, _, fmt, _ = setup(cfg)
    model.eval()
    with torch.no_grad():
        model(gauss((4, 512), 0))
    assert fmt.act_meter.tensors == 0


def test_config_operand_fields_validate_in_one_line():
    cfg = MarvinConfig.make(**OWN)
    assert cfg.own_operands == ("act", "grad")
    assert MarvinConfig(activations="own").own_operands == ("act",)
    assert MarvinConfig().own_operands == ()
    assert MarvinConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(MarvinConfigError, match="activations") as e:
        MarvinConfig.make(activations="mine")
    assert "\n" not in str(e.value)
    with pytest.raises(MarvinConfigError, match="gradients"):
        MarvinConfig.from_json(json.dumps({"gradients": 8}))


def _seed_claims():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "seed_claims.py"
    spec = importlib.util.spec_from_file_location("seed_claims_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cost_claims_need_the_speedup_and_pick_the_fixed_word_nearest_in_cost():
    sc = _seed_claims()
    geom = pd.DataFrame({"layer": ["a", "b"], "M": [4, 1], "K": [3, 8], "N": [2, 5],
                         "groups": [1, 1], "weights": [6, 40], "input_grad": [False, True]})
    words = {"float32": None, "marvin": (6, 6, 6), "marvin_operand": (6, 8, 8),
             "fixed4": (4, 4, 4), "fixed6": (6, 6, 6), "fixed8": (8, 8, 8),
             "fixed16": (16, 16, 16)}
    accs = {"float32": 80.0, "marvin": 79.9, "marvin_operand": 80.1, "fixed4": 50.0,
            "fixed6": 79.0, "fixed8": 80.0, "fixed16": 80.0}
    rows = []
    for cell, wag in words.items():
        fl = wag is None
        w, a, g = wag or (32, 32, 32)
        usage = pd.DataFrame([(layer, w, a, g, fl, fl, fl, 32, 3) for layer in ("a", "b")],
                             columns=USAGE_COLUMNS)
        trace = json.dumps({"geometry": geom.to_dict("split", index=False),
                            "usage": usage.to_dict("split", index=False)})
        for i in range(5):
            rows.append({"part": "marvin", "cell": cell, "seed": i, "trace": trace,
                         "top1_pct": accs[cell] + (0.1 if cell != "float32" else 0.05) * i})
    test = pd.DataFrame(rows)
    c = sc.marvin_costs(test).set_index("cell")
    assert c.loc["fixed8", "quadratic_speedup_vs_fp32_x"] == pytest.approx(16.0)
    assert c.loc["fixed8", "linear_speedup_vs_fixed16_x"] == pytest.approx(2.0)
    assert c.loc["marvin_operand", "act_bits_per_mac"] == 8.0
    assert c.loc["marvin_operand", "weight_bits_per_mac"] == pytest.approx((48 * 6 + 160 * 6) / 208)
    eq = {(o, m): b for _, o, b, _, m, _ in sc.equal_cost_claims(c.reset_index())}
    # nearest in cost: marvin_operand's quadratic cost 18176 / (336 * 1024) = 0.0528 lies
    # between fixed6 (0.0352) and fixed8 (0.0625), nearer fixed8; its linear cost is 0.25
    assert eq[("marvin", "quadratic")] == "fixed6" and eq[("marvin", "linear")] == "fixed6"
    assert c.loc["marvin_operand", "quadratic_cost_rel_fp32"] == pytest.approx(18176 / 344064)
    assert eq[("marvin_operand", "quadratic")] == eq[("marvin_operand", "linear")] == "fixed8"
    claims = sc.summarise(test, c.reset_index())
    speed = claims[claims["cost_model"].notna() & (claims["baseline"] == "float32")]
    assert len(speed) == 4 and (speed["speedup_x"] > 1.86).all()
    assert (speed["verdict"] == "reproduced").all()  # within 1 pt of float32, >= 1.86x
    paired = sc.paired_marvin(claims, test).set_index("claim")
    row = claims.set_index("claim").loc[speed["claim"].iloc[0]]  # marvin vs float32
    p = paired.loc[row.name]
    assert p["n_pairs"] == 5 and p["paired_diff_pct"] == pytest.approx(row["diff_pct"])
    # per-seed differences -0.1 + 0.05 i: a paired t interval from a NumPy reference
    d = -0.1 + 0.05 * np.arange(5)
    half = 2.7764451051977987 * d.std(ddof=1) / np.sqrt(5)  # t(0.975, 4)
    assert p["paired_ci95_low_pct"] == pytest.approx(d.mean() - half)
    assert p["paired_verdict"] == "reproduced"
    # a cost claim whose speed-up is short of its minimum is "not reproduced" whatever accuracy
    sc.COST_CLAIMS = [("slow", "fixed16", "float32", -1.0, "linear", 3.0)]
    row = sc.summarise(test, c.reset_index()).set_index("claim").loc["slow"]
    assert row["speedup_x"] == pytest.approx(2.0) and row["verdict"] == "not reproduced"
