"""The MARViN precision controller: per layer, every `L` batches, the smallest word length
whose fixed-point copy of the weights loses at most `eps` nats of KL divergence, raised when
too many updates would round to zero (docs/methods.md, MARViN; every threshold in `MarvinConfig`).

Decision rule for one layer (current word ``cur``, the menu sorted ascending):

1. ``proposal`` = the smallest menu WL whose fixed-point copy at FL fitted to ``max|w|``
   keeps SQNR >= ``sqnr_min_db`` (``info_measure="sqnr"``) or ``KL(P_float || P_fixed) <= eps``
   (``"kl"``) (the widest menu entry when none qualifies).
2. Vanishing-gradient guard: if more than ``guard_zero_fraction`` of the layer's updates over
   the last window vanished at ``cur``, the word goes one menu step up, whatever the proposal
   (reason ``guard``). ``guard_measure="update"``: the real optimizer step w_after - w_before
   (call `before_step` before ``opt.step()``) vanishes when round(w_before + d) == round(w_before)
   on the layer's grid; only fixed-point master weights lose such updates, so with float32
   masters the fraction is recorded and the guard never fires. ``"lr_grad"``: ``lr * |grad|``
   below half a step ``2^-(FL+1)`` (call `observe_updates`).
3. Else a wider proposal applies at once (``kl_up``); a narrower one is limited to words at
   which the window's updates would not trip the guard (``guard_floor`` when that leaves
   ``cur``), and applies only after ``hysteresis_decisions`` consecutive decisions asked to go
   down (``hysteresis`` while waiting, then ``kl_down``); an equal one is ``keep``.

FL is re-fitted to ``max|w|`` at every decision. Every decision is a row of the history.

Operands with their own word (``activations`` / ``gradients = "own"``) are decided at the same
iterations, and once more after the first batch (their first measure, reason ``init``; until
then they run at the weight's initial word): the proposal is the smallest menu WL whose SQNR, pooled
over the window's batches (`SqnrMeter`), is >= ``sqnr_min_db``; wider applies at once (``up``),
narrower after ``hysteresis_decisions`` consecutive proposals (``hysteresis``, then ``down``).
No guard: an operand is not accumulated into, so no update can vanish in it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from quantize.marvin.config import MarvinConfig
from quantize.marvin.fixed_point import frac_bits_for, max_abs, quantize_fixed, vanish_threshold
from quantize.marvin.kl import fixed_point_kl
from quantize.marvin.layers import LayerFormat

log = logging.getLogger(__name__)

__all__ = ["HISTORY_COLUMNS", "USAGE_COLUMNS", "PrecisionController", "propose_word_bits", "sqnr_db"]

HISTORY_COLUMNS = ["iteration", "layer", "word_length_bits", "frac_bits", "kl_nats", "sqnr_db",
                   "proposal_bits", "zero_update_fraction", "reason",
                   # the operands' words (32: float32) and, for "own" ones, the window's SQNR at
                   # the chosen word and the decision's reason ("layer" / "float" otherwise)
                   "act_word_bits", "act_sqnr_db", "act_reason",
                   "grad_word_bits", "grad_sqnr_db", "grad_reason"]
OPERANDS = ("act", "grad")
# the cost model's usage table (npusim.cost.training.USAGE_COLUMNS)
USAGE_COLUMNS = ["layer", "weight_bits", "act_bits", "grad_bits", "weight_float", "act_float",
                 "grad_float", "batch_size", "batches"]


def sqnr_db(weights: np.ndarray, word_bits: int, frac_bits: int) -> float:
    """10 log10(sum w^2 / sum (w - Q(w))^2) of the round-to-nearest fixed-point copy (inf when
    the copy is exact, 0 for all-zero weights)."""
    w = torch.from_numpy(np.asarray(weights, dtype=np.float64).ravel())
    signal = float((w * w).sum())
    if signal == 0.0:
        return 0.0
    noise = float(((w - quantize_fixed(w, word_bits, frac_bits)) ** 2).sum())
    return math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)


def propose_word_bits(weights: np.ndarray, config: MarvinConfig) -> tuple[int, dict[int, float]]:
    """The smallest menu WL that meets the configured information measure (the widest if none)
    and the measure of every word length tried (KL in nats or SQNR in dB)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    m = float(np.abs(w).max()) if w.size else 0.0
    vals: dict[int, float] = {}
    for wl in config.word_bits_menu:
        if config.info_measure == "sqnr":
            vals[wl] = sqnr_db(w, wl, frac_bits_for(m, wl))
            ok = vals[wl] >= config.sqnr_min_db
        else:
            vals[wl] = fixed_point_kl(w, wl, frac_bits_for(m, wl), config.histogram_bins,
                                      config.kl_bias_correction)
            ok = vals[wl] <= config.kl_eps
        if ok:
            return wl, vals
    return config.word_bits_menu[-1], vals


@dataclass
class _Track:
    """Per-layer window state: updates seen and, per menu word, how many would vanish."""

    zero_counts: np.ndarray
    updates: int = 0
    pending_down: int = 0
    # "own" operands: consecutive narrower proposals, and whether the first decision was made
    op_pending: dict[str, int] = field(default_factory=lambda: {o: 0 for o in OPERANDS})
    op_decided: set[str] = field(default_factory=set)


@dataclass
class PrecisionController:
    """Owns the layers' formats; call `observe_updates` after backward, `after_step` after
    the optimizer step (it decides every ``lookback_batches``)."""

    formats: dict[str, LayerFormat]
    modules: dict[str, nn.Module]
    config: MarvinConfig
    rows: list[dict] = field(default_factory=list)
    _usage: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    _tracks: dict[str, _Track] = field(default_factory=dict)
    _gen: torch.Generator = field(default_factory=torch.Generator)
    _before: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.formats) != set(self.modules):
            raise ValueError("controller: formats and modules name different layers")
        menu = self.config.word_bits_menu
        self._tracks = {n: _Track(np.zeros(len(menu), dtype=np.int64)) for n in self.formats}
        self._gen.manual_seed(self.config.seed)

    # ------------------------------------------------------------------ training hooks
    def start(self) -> None:
        """The first decision, from the initial weights (reason ``init``, no hysteresis)."""
        for name, fmt in self.formats.items():
            w = self.modules[name].weight.detach()
            prop, kls = propose_word_bits(w.cpu().numpy(), self.config)
            fmt.word_bits = prop
            fmt.frac_bits = frac_bits_for(max_abs(w), prop)
            for o in self.config.own_operands:  # the weight's word until first measured
                setattr(fmt, f"{o}_own", prop)
            ops = {o: (np.nan, "start") for o in self.config.own_operands}
            self._record(0, name, fmt, w, prop, np.nan, "init", ops)

    @torch.no_grad()
    def observe_updates(self, lrs: dict[str, float]) -> None:
        """Count, per layer and menu word, the updates ``lr * grad`` that round to zero.

        Args:
            lrs: each layer's current learning rate (its weight's optimizer group).
        """
        if self.config.guard_measure != "lr_grad":
            return
        menu = self.config.word_bits_menu
        for name, track in self._tracks.items():
            w = self.modules[name].weight
            if w.grad is None:
                continue
            u = w.grad.detach().abs() * float(lrs[name])
            m = max_abs(w)
            for i, wl in enumerate(menu):
                track.zero_counts[i] += int((u < vanish_threshold(frac_bits_for(m, wl))).sum())
            track.updates += u.numel()

    @torch.no_grad()
    def before_step(self) -> None:
        """Remember the weights before ``opt.step()`` (the "update" guard measures the step)."""
        if self.config.guard_measure == "update":
            self._before = {n: m.weight.detach().clone() for n, m in self.modules.items()}

    @torch.no_grad()
    def _count_real_updates(self) -> None:
        """Per layer and menu word: how many of the step's updates leave the fixed-point copy
        of the stored weight unchanged (round(w + d) == round(w), FL fitted to max|w|; a step
        too small to change even the float32 weight counts as vanished too)."""
        menu = self.config.word_bits_menu
        for name, track in self._tracks.items():
            before = self._before.get(name)
            if before is None:
                continue
            after = self.modules[name].weight.detach()
            m = max_abs(before)
            for i, wl in enumerate(menu):
                fl = frac_bits_for(m, wl)
                same = quantize_fixed(after, wl, fl) == quantize_fixed(before, wl, fl)
                track.zero_counts[i] += int(same.sum())
            track.updates += before.numel()
        self._before = {}

    @torch.no_grad()
    def after_step(self, iteration: int, batch_size: int) -> None:
        """Account the batch just trained (at the formats it used); round fixed master weights;
        decide when ``iteration`` (batches done) is a multiple of ``lookback_batches``."""
        cfg = self.config
        if cfg.guard_measure == "update":
            self._count_real_updates()  # before the fixed master weights are re-rounded
        for name, fmt in self.formats.items():
            key = (name, fmt.word_bits, fmt.act_bits, fmt.grad_bits, False, not fmt.activations,
                   not fmt.gradients, int(batch_size))
            self._usage[key] += 1
            if cfg.master_weights == "fixed":
                w = self.modules[name].weight
                fmt.frac_bits = frac_bits_for(max_abs(w), fmt.word_bits)
                w.copy_(quantize_fixed(w, fmt.word_bits, fmt.frac_bits, cfg.update_rounding,
                                       generator=self._gen))
        # a one-entry menu (fixed-precision training) still re-fits FL to max|w| here
        if iteration % cfg.lookback_batches == 0:
            self.decide(iteration)
        elif iteration == 1 and cfg.own_operands:
            self.decide_operands(iteration)

    @torch.no_grad()
    def _operand(self, fmt: LayerFormat, track: _Track, op: str) -> tuple[float, str]:
        """Decide one "own" operand's word from its meter (see the module docstring); returns
        the window's SQNR at the chosen word and the reason. Resets the meter."""
        cfg = self.config
        meter = getattr(fmt, f"{op}_meter")
        cur = getattr(fmt, f"{op}_own")
        if meter is None or meter.tensors == 0:
            return np.nan, "no_data"
        vals = meter.sqnr_db()
        menu = cfg.word_bits_menu
        prop = next((wl for wl in menu if vals[wl] >= cfg.sqnr_min_db), menu[-1])
        new = cur
        if op not in track.op_decided:
            new, reason = prop, "init"
            track.op_decided.add(op)
            track.op_pending[op] = 0
        elif prop > cur:
            new, reason = prop, "up"
            track.op_pending[op] = 0
        elif prop < cur:
            track.op_pending[op] += 1
            if track.op_pending[op] >= cfg.hysteresis_decisions:
                new, reason = prop, "down"
                track.op_pending[op] = 0
            else:
                reason = "hysteresis"
        else:
            reason = "keep"
            track.op_pending[op] = 0
        setattr(fmt, f"{op}_own", new)
        meter.reset()
        return vals[new], reason

    @torch.no_grad()
    def decide_operands(self, iteration: int) -> None:
        """Decide only the "own" operands (after the first batch); the weight words stay."""
        for name, fmt in self.formats.items():
            track = self._tracks[name]
            ops = {o: self._operand(fmt, track, o) for o in self.config.own_operands}
            w = self.modules[name].weight.detach()
            self._record(iteration, name, fmt, w, fmt.word_bits, np.nan, "operands_only", ops)

    # ------------------------------------------------------------------ the decision
    @torch.no_grad()
    def decide(self, iteration: int) -> None:
        """One decision for every layer (see the module docstring); resets the windows."""
        cfg = self.config
        menu = list(cfg.word_bits_menu)
        for name, fmt in self.formats.items():
            w = self.modules[name].weight.detach()
            track = self._tracks[name]
            prop, kls = propose_word_bits(w.cpu().numpy(), cfg)
            frac = (track.zero_counts / track.updates) if track.updates else \
                np.zeros(len(menu))
            cur = fmt.word_bits
            ci = menu.index(cur)
            zero_now = float(frac[ci]) if track.updates else np.nan
            # float32 master weights lose no update: the "update" guard only records
            can_lose = cfg.guard_measure == "lr_grad" or cfg.master_weights == "fixed"
            vanishing = can_lose and track.updates and frac[ci] > cfg.guard_zero_fraction
            if vanishing:
                new = menu[min(ci + 1, len(menu) - 1)]
                reason = "guard" if new > cur else "guard_at_ceiling"
                track.pending_down = 0
            elif prop > cur:
                new, reason = prop, "kl_up"
                track.pending_down = 0
            elif prop < cur:
                ok = [wl for i, wl in enumerate(menu) if prop <= wl < cur
                      and (not can_lose or not track.updates
                           or frac[i] <= cfg.guard_zero_fraction)]
                if not ok:
                    new, reason = cur, "guard_floor"
                    track.pending_down = 0
                else:
                    track.pending_down += 1
                    if track.pending_down >= cfg.hysteresis_decisions:
                        new, reason = min(ok), "kl_down"
                        track.pending_down = 0
                    else:
                        new, reason = cur, "hysteresis"
            else:
                new, reason = cur, "keep"
                track.pending_down = 0
            fmt.word_bits = new
            fmt.frac_bits = frac_bits_for(max_abs(w), new)
            ops = {o: self._operand(fmt, track, o) for o in cfg.own_operands}
            self._record(iteration, name, fmt, w, prop, zero_now, reason, ops)
            track.zero_counts[:] = 0
            track.updates = 0
        log.debug("decision at iteration %d: %s", iteration,
                  {n: f.word_bits for n, f in self.formats.items()})

    def _record(self, iteration: int, name: str, fmt: LayerFormat, w: torch.Tensor, prop: int,
                zero: float, reason: str, ops: dict[str, tuple[float, str]]) -> None:
        cfg = self.config
        modes = {"act": cfg.activations, "grad": cfg.gradients}
        extra = {}
        for op in OPERANDS:
            sq, why = ops.get(op, (np.nan, modes[op]))
            extra |= {f"{op}_word_bits": int(getattr(fmt, f"{op}_bits")),
                      f"{op}_sqnr_db": float(sq), f"{op}_reason": why}
        wn = w.detach().cpu().numpy()
        kl = fixed_point_kl(wn, fmt.word_bits, fmt.frac_bits, cfg.histogram_bins,
                            cfg.kl_bias_correction) if cfg.info_measure == "kl" else np.nan
        self.rows.append({"iteration": int(iteration), "layer": name,
                          "word_length_bits": int(fmt.word_bits), "frac_bits": int(fmt.frac_bits),
                          "kl_nats": float(kl),
                          "sqnr_db": sqnr_db(wn, fmt.word_bits, fmt.frac_bits),
                          "proposal_bits": int(prop),
                          "zero_update_fraction": float(zero), "reason": reason, **extra})

    # ------------------------------------------------------------------ results
    def history(self) -> pd.DataFrame:
        """Every decision, one row per (iteration, layer) (tidy; `HISTORY_COLUMNS`)."""
        return pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)

    def usage(self) -> pd.DataFrame:
        """Batches trained per layer, format and batch size (what the cost model charges)."""
        rows = [(*k, v) for k, v in self._usage.items()]
        return pd.DataFrame(rows, columns=USAGE_COLUMNS)
