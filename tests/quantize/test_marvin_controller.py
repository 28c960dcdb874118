"""MARViN controller: KL vs an independent reference, expected word lengths on synthetic
weights, the vanishing-gradient guard, hysteresis, config validation."""

import numpy as np
import pytest
import torch
from torch import nn

from quantize.marvin import (
    MarvinConfig,
    MarvinConfigError,
    PrecisionController,
    attach,
    fixed_point_kl,
    frac_bits_for,
    marvin_layers,
    propose_word_bits,
    sqnr_db,
)

# The first design's measures (the defaults are now the real-update guard and SQNR).
FIRST = {"info_measure": "kl", "guard_measure": "lr_grad"}


def ref_kl(w: np.ndarray, wl: int, bins: int = 256) -> float:
    """Direct construction: each fixed-point level's mass spread uniformly over its rounding
    cell (clipped to the weights' range), integrated bin by bin via an overlap matrix."""
    w = w.astype(np.float64).ravel()
    n, m = w.size, np.abs(w).max()
    fl = frac_bits_for(m, wl)
    step = 2.0 ** -fl
    levels, counts = np.unique(np.clip(np.rint(w / step), -2 ** (wl - 1), 2 ** (wl - 1) - 1),
                               return_counts=True)
    a = np.maximum((levels - 0.5) * step, -m)[:, None]
    b = np.minimum((levels + 0.5) * step, m)[:, None]
    edges = np.linspace(-m, m, bins + 1)
    lo, hi = edges[None, :-1], edges[None, 1:]
    overlap = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None) / (b - a)
    q = (counts[:, None] * overlap).sum(0) / n
    p = np.histogram(w, edges)[0] / n
    k = p > 0
    kl = float(np.sum(p[k] * np.log(p[k] / np.maximum(q[k], 1e-12))))
    return max(0.0, kl - (np.count_nonzero(q > 1e-15) - 1) / (2 * n))


def samples(kind: str, n: int = 20_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "narrow":   # bounded: the bulk fills the range
        return rng.uniform(-0.05, 0.05, n)
    if kind == "wide":     # Gaussian: max|w| ~ 4 sigma
        return rng.normal(0.0, 1.0, n)
    return rng.standard_t(2, n) * 0.01  # heavy-tailed: max|w| far out in the tail


@pytest.mark.parametrize("kind", ["narrow", "wide", "heavy"])
@pytest.mark.parametrize("wl", [4, 6, 8, 12])
def test_kl_matches_reference(kind, wl):
    w = samples(kind, 5_000)
    got = fixed_point_kl(w, wl, frac_bits_for(np.abs(w).max(), wl))
    assert got == pytest.approx(ref_kl(w, wl), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind, expected", [("narrow", 4), ("wide", 6), ("heavy", 12)])
def test_controller_picks_expected_word_length(kind, expected):
    w = samples(kind)
    cfg = MarvinConfig(**FIRST)
    # expected = the smallest menu word whose reference KL is within eps
    ref = next(wl for wl in cfg.word_bits_menu if ref_kl(w, wl) <= cfg.kl_eps)
    assert ref == expected
    wl, kls = propose_word_bits(w, cfg)
    assert wl == expected
    assert kls[wl] <= cfg.kl_eps and all(v > cfg.kl_eps for k, v in kls.items() if k < wl)


def test_more_bits_never_lose_more_information_on_gaussian_weights():
    w = samples("wide")
    kls = [fixed_point_kl(w, wl, frac_bits_for(np.abs(w).max(), wl)) for wl in (4, 6, 8, 12)]
    assert kls == sorted(kls, reverse=True)


def _one_layer(cfg: MarvinConfig, w: np.ndarray):
    lin = nn.Linear(w.size, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.astype(np.float32)).view(1, -1))
    model = nn.Sequential(lin)
    formats = attach(model, cfg)
    ctl = PrecisionController(formats, marvin_layers(model), cfg)
    return model, lin, formats["0"], ctl


def test_guard_raises_precision_when_updates_vanish():
    cfg = MarvinConfig(guard_zero_fraction=0.5, lookback_batches=1, **FIRST)
    _, lin, fmt, ctl = _one_layer(cfg, samples("wide", 4096))
    ctl.start()
    assert fmt.word_bits == 6
    lin.weight.grad = torch.full_like(lin.weight, 1e-9)   # lr * grad far below 2^-(FL+1)
    ctl.observe_updates({"0": 0.1})
    ctl.after_step(1, 32)
    h = ctl.history()
    assert fmt.word_bits == 8 and h["reason"].iloc[-1] == "guard"
    assert h["zero_update_fraction"].iloc[-1] == 1.0
    # updates that survive rounding do not trip it; KL keeps 6 bits... after hysteresis
    lin.weight.grad = torch.full_like(lin.weight, 10.0)
    for it in (2, 3):
        ctl.observe_updates({"0": 0.1})
        ctl.after_step(it, 32)
    assert ctl.history()["reason"].tolist()[-2:] == ["hysteresis", "kl_down"]
    assert fmt.word_bits == 6


def test_guard_does_not_fire_for_large_updates_and_can_be_switched_off():
    cfg = MarvinConfig(guard_zero_fraction=1.0, lookback_batches=1, **FIRST)
    _, lin, fmt, ctl = _one_layer(cfg, samples("wide", 4096))
    ctl.start()
    lin.weight.grad = torch.full_like(lin.weight, 1e-12)
    ctl.observe_updates({"0": 0.1})
    ctl.after_step(1, 32)
    assert fmt.word_bits == 6 and ctl.history()["reason"].iloc[-1] == "keep"


def test_hysteresis_prevents_flapping_on_a_boundary():
    """Weights alternate between a distribution that needs 6 bits and one that needs 8: with
    hysteresis the layer goes up once and stays; without it, it flaps every decision."""
    six, eight = samples("wide", 4096), samples("heavy", 4096, seed=3)
    assert propose_word_bits(six, MarvinConfig(**FIRST))[0] == 6
    assert propose_word_bits(eight, MarvinConfig(**FIRST))[0] > 6

    def switches(hyst: int) -> int:
        cfg = MarvinConfig(hysteresis_decisions=hyst, guard_zero_fraction=1.0,
                           lookback_batches=1, **FIRST)
        _, lin, fmt, ctl = _one_layer(cfg, six)
        ctl.start()
        for it in range(1, 11):
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy((eight if it % 2 else six)
                                                  .astype(np.float32)).view(1, -1))
            ctl.after_step(it, 32)
        wl = ctl.history()["word_length_bits"].to_numpy()
        return int(np.count_nonzero(np.diff(wl)))

    assert switches(2) == 1
    assert switches(1) == 10


def test_config_rejects_unknown_keys_and_bad_values_in_one_line():
    with pytest.raises(MarvinConfigError, match="bogus: unknown key"):
        MarvinConfig.from_json('{"bogus": 1}')
    with pytest.raises(MarvinConfigError, match="kl_eps"):
        MarvinConfig.make(kl_eps=-1)
    with pytest.raises(MarvinConfigError, match="word_bits_menu"):
        MarvinConfig.make(word_bits_menu=(8, 40))
    with pytest.raises(MarvinConfigError, match="not valid JSON"):
        MarvinConfig.from_json("{")
    cfg = MarvinConfig.make(word_bits_menu=(16, 8))
    assert cfg.word_bits_menu == (8, 16)
    assert MarvinConfig.from_json(cfg.to_json()) == cfg
    assert MarvinConfig(word_bits_menu=(8,)).label() == "fixed8" and cfg.label() == "marvin"
    with pytest.raises(Exception):
        cfg.kl_eps = 0.5  # frozen


@pytest.mark.parametrize("kind, expected", [("narrow", 4), ("wide", 6), ("heavy", 12)])
def test_sqnr_proposal_is_the_smallest_word_meeting_the_floor(kind, expected):
    w = samples(kind)
    cfg = MarvinConfig()
    m = np.abs(w).max()
    # independent SQNR: plain NumPy round-to-nearest with saturation
    def ref(wl):
        step = 2.0 ** -frac_bits_for(m, wl)
        q = np.clip(np.rint(w / step), -2 ** (wl - 1), 2 ** (wl - 1) - 1) * step
        return 10 * np.log10(np.sum(w ** 2) / np.sum((w - q) ** 2))
    want = next(wl for wl in cfg.word_bits_menu if ref(wl) >= cfg.sqnr_min_db)
    wl, vals = propose_word_bits(w, cfg)
    assert wl == want == expected
    for k, v in vals.items():
        assert v == pytest.approx(ref(k), rel=1e-9)


def test_sqnr_measures_the_rounding_itself():
    """On-grid weights lose nothing (inf dB); the same weights moved by 0.49 step lose a lot;
    more bits never lower the SQNR of Gaussian weights."""
    wl, m = 4, 0.875
    fl = frac_bits_for(m, wl)
    step = 2.0 ** -fl
    on = np.random.default_rng(0).integers(-7, 7, 20000) * step
    assert sqnr_db(on, wl, fl) == np.inf
    assert sqnr_db(np.clip(on + 0.49 * step, -m, m), wl, fl) < 20  # vs 30+ for 8-bit
    w = samples("wide")
    vals = [sqnr_db(w, b, frac_bits_for(np.abs(w).max(), b)) for b in (4, 6, 8, 12, 16)]
    assert vals == sorted(vals)


def _step_once(cfg, w0, grad, lr, momentum, weight_decay, steps):
    """Train a one-layer model `steps` SGD steps with a constant gradient; the controller's
    window fraction of vanished updates at the current word (decisions every `steps`)."""
    _, lin, fmt, ctl = _one_layer(cfg, w0)
    ctl.start()
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for it in range(1, steps + 1):
        lin.weight.grad = torch.full_like(lin.weight, grad)
        ctl.observe_updates({"0": lr})
        ctl.before_step()
        opt.step()
        ctl.after_step(it, 32)
    return ctl.history(), fmt


def test_update_guard_counts_momentum_and_weight_decay_lr_grad_does_not():
    """Weights on the 6-bit grid, fixed-point masters; a gradient far below half a step, but
    weight decay moves every weight by more than a step per batch: the real update reaches the
    grid, so the "update" guard sees nothing vanish; the lr*|grad| proxy says all of it did."""
    w0 = samples("wide", 4096)
    m = np.abs(w0).max()
    step = 2.0 ** -frac_bits_for(m, 6)
    w0 = np.rint(w0 / step) * step  # stored weights on the grid
    base = {"lookback_batches": 3, "guard_zero_fraction": 0.5, "master_weights": "fixed",
            "update_rounding": "nearest", "info_measure": "sqnr"}
    kw = {"w0": w0, "grad": 1e-9, "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0, "steps": 3}
    h_upd, _ = _step_once(MarvinConfig(guard_measure="update", **base), **kw)
    h_old, _ = _step_once(MarvinConfig(guard_measure="lr_grad", **base), **kw)
    assert h_old["zero_update_fraction"].iloc[-1] == 1.0 and h_old["reason"].iloc[-1] == "guard"
    assert h_upd["zero_update_fraction"].iloc[-1] < 0.5 and h_upd["reason"].iloc[-1] != "guard"
    # Without weight decay the same tiny gradient is lost at 6 bits: both measures agree.
    kw0 = {**kw, "weight_decay": 0.0}
    h_upd0, _ = _step_once(MarvinConfig(guard_measure="update", **base), **kw0)
    assert h_upd0["zero_update_fraction"].iloc[-1] == 1.0 and h_upd0["reason"].iloc[-1] == "guard"


def test_update_guard_never_fires_with_float_master_weights():
    w0 = samples("wide", 4096)
    cfg = MarvinConfig(lookback_batches=2, guard_zero_fraction=0.5, info_measure="kl")
    h, fmt = _step_once(cfg, w0, grad=1e-9, lr=0.1, momentum=0.9, weight_decay=0.0, steps=4)
    assert (h["zero_update_fraction"].iloc[1:] == 1.0).all()  # recorded: the copy never moved
    assert "guard" not in set(h["reason"]) and fmt.word_bits == 6
