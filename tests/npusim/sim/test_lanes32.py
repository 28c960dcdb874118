"""The chunk screen's test on int32 lanes (`npusim.sim.lanes32`, through `kernels._screen_chunk32`)
against the rule written out in Python integers, at the levels' edges (ties) included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.sim import kernels as K

_BIG = (1 << 30) - 1  # the kernel's stand-in for an unbounded pe level (os order)


@st.composite
def chunk(draw):
    """Held values within a b-bit level (b <= 30), chunk sums and positive sums (float32
    integers below 2^24, pos >= max(sum, 0)), a fifth of them placed exactly on an edge."""
    o = draw(st.integers(1, 70))  # whole 16-lane blocks and a remainder
    bits = draw(st.integers(2, 30))
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    pe_bits = draw(st.one_of(st.none(), st.integers(2, 30)))
    phi, plo = (_BIG, -_BIG) if pe_bits is None else ((1 << (pe_bits - 1)) - 1, -(1 << (pe_bits - 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    top = min(1 << 23, 4 * (hi + 1))
    held = rng.integers(lo, hi + 1, o)
    pos = rng.integers(0, top, o)
    neg = -rng.integers(0, top, o)
    edge = rng.random(o) < 0.2
    kind = rng.integers(0, 4, o)
    pos = np.where(edge & (kind == 0), np.clip(hi - held + rng.integers(-1, 2, o), 0, top), pos)
    neg = np.where(edge & (kind == 1), np.clip(lo - held + rng.integers(-1, 2, o), -top, 0), neg)
    pos = np.where(edge & (kind == 2), np.clip(phi + rng.integers(-1, 2, o), 0, top), pos)
    neg = np.where(edge & (kind == 3), np.clip(plo + rng.integers(-1, 2, o), -top, 0), neg)
    return held, pos + neg, pos, (hi, lo, phi, plo)


@settings(max_examples=300, deadline=None)
@given(chunk(), st.integers(0, 3))
def test_screen_chunk32_equals_the_rule(case, at):
    held, sums, pos, (hi, lo, phi, plo) = case
    o = len(held)
    # the chunk's sums and positive sums at offsets in longer rows, as the kernel reads them
    row = np.zeros(o + 3 * at + 5, np.float32)
    row[at:at + o] = sums
    prow = np.zeros(o + 2 * at + 7, np.float32)
    prow[2 * at:2 * at + o] = pos
    got = held.astype(np.int32)
    ok = np.empty(o, np.bool_)
    nfail = K._screen_chunk32(row, prow, at, 2 * at, got, ok, o, np.int32(hi), np.int32(lo),
                              np.int32(phi), np.int32(plo))
    want_ok = [int(a) + int(p) <= hi and int(a) + int(s) - int(p) >= lo and int(p) <= phi
               and int(s) - int(p) >= plo for a, s, p in zip(held, sums, pos)]
    want = [int(a) + int(s) if g else int(a) for a, s, g in zip(held, sums, want_ok)]
    assert ok.tolist() == want_ok
    assert got.tolist() == want
    assert nfail == o - sum(want_ok)
