"""The exact int8 engine (`npusim.sim.int8_engine`) against independent references.

The engine is oneDNN's int8 convolution with float32 output (exact integers below 2^24), in
channels-last layout, with positive/negative product sums as extra columns, per-image column
sums checked against window sums of the input, and a spot check. Every piece is checked here
against a plain int64 NumPy convolution, on random shapes and on the extreme values where
int8 arithmetic breaks (-128, 255 x 127 pairs, zero points, padding, groups).
"""

import dataclasses
import functools
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim.hw.config import NPUConfig
from npusim.sim import accumulate, engines, int8_engine, int8_tiles
from npusim.sim.exact_conv import InexactError
from npusim.sim.int8_engine import Int8Support, int8_conv, prepare_int8_conv
from npusim.sim.simulator import SimulationError, Simulator
from tests.npusim import naive
from tests.npusim.programs import conv_program

NATIVE = int8_engine.probe().ok
#: plans for this CPU's int8 path (the emulated engine is exact, like VNNI)
_prepare = functools.partial(prepare_int8_conv, kind=int8_engine.probe().kind or "exact")


def _emulated_pack(wq, zp_u8, stride, padding, groups):
    return np.asarray(wq, np.int64)


def _emulated_run(xu, zp_u8, packed, q, stride, padding, groups):
    """What oneDNN returns, computed in int64: float32 sums (exact below 2^24)."""
    return int8_engine._ref_nhwc(xu, packed, zp_u8, stride, padding, groups).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def engine():
    """oneDNN where the CPU makes it exact (VNNI/AMX); elsewhere the same engine with its
    conv emulated in int64, so that everything around the conv (packing of sign columns,
    window-sum verification, spot checks, the fused epilogue, bound bits, re-simulation,
    sharing between configurations) is tested on every machine."""
    if NATIVE:
        yield "onednn"
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_engine, "_pack", _emulated_pack)
        mp.setattr(int8_engine, "_run", _emulated_run)
        mp.setattr(int8_engine, "probe", lambda: Int8Support("exact"))
        yield "emulated"


def ref_conv(x, w, stride, padding, groups=1, pad_value=0):
    """int64 NCHW conv by explicit windows (padding with `pad_value`)."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                constant_values=pad_value)
    o, cg, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride,
                                                                                ::stride]
    og = o // groups
    return np.concatenate([np.einsum("nchwij,ocij->nohw", win[:, g * cg:(g + 1) * cg],
                                     w[g * og:(g + 1) * og].astype(np.int64))
                           for g in range(groups)], axis=1)


@st.composite
def int8_case(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 4))
    o = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    h = draw(st.integers(max(k - 2 * pad, 1), 7))
    wd = draw(st.integers(max(k - 2 * pad, 1), 7))
    n = draw(st.integers(1, 3))
    lo, hi = draw(st.sampled_from([(0, 255), (-128, 127), (0, 15), (-8, 7), (3, 200), (-255, 0)]))
    zp = draw(st.sampled_from([0, 0, 3, -5, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([lo, hi, min(max(0, lo), hi), rng.integers(lo, hi + 1)], size=(n, c, h, wd)) + zp
    w = rng.choice([-128, 127, -127, 0, 1, rng.integers(-128, 128)], size=(o, c // groups, k, k))
    return x.astype(np.int64), w.astype(np.int64), stride, pad, groups, zp, (lo + zp, hi + zp)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4),
       st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.data())
def test_window_sums_equal_a_walk_over_every_output(n, h, wd, c, kh, kw, stride, data):
    """The verification's input side (`kernels.window_sums_kernel`): for every weight position,
    the image-weighted sum of ``x - zp`` and the count of ``x != zp`` over the inputs it meets,
    against a walk over every output position (padding skipped); inputs of several dtypes,
    with zero points that are values of the dtype and some that are not (``|x - zp| <= 255``
    either way)."""
    from npusim.sim import kernels as K

    pad = data.draw(st.integers(0, min(kh, kw) - 1))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    if ho < 1 or wo < 1:
        return
    dt = data.draw(st.sampled_from([np.uint8, np.uint8, np.int8, np.int16, np.int32]))
    zp = data.draw(st.sampled_from([0, 3, 128, 255, -5, 200, -200]))
    info = np.iinfo(dt)
    lo, hi = max(int(info.min), zp - 255), min(int(info.max), zp + 255)  # never empty here
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([lo, hi, min(max(zp, lo), hi), rng.integers(lo, hi + 1)],
                   size=(n, h, wd, c)).astype(dt)
    s = np.full((kh, kw, c), 7, np.int64)  # the kernel overwrites, whatever is there
    cnt = np.full((kh, kw, c), 7, np.int64)
    K.window_sums_kernel(x, zp, stride, pad, ho, wo, s, cnt)
    want_s = np.zeros((kh, kw, c), np.int64)
    want_c = np.zeros((kh, kw, c), np.int64)
    for b in range(n):
        for i in range(kh):
            for j in range(kw):
                for oy in range(ho):
                    for ox in range(wo):
                        y, xx = oy * stride + i - pad, ox * stride + j - pad
                        if 0 <= y < h and 0 <= xx < wd:
                            v = x[b, y, xx].astype(np.int64) - zp
                            want_s[i, j] += (1 + b % 4) * v
                            want_c[i, j] += v != 0
    np.testing.assert_array_equal(s, want_s)
    np.testing.assert_array_equal(cnt, want_c)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([31, 32, 33, 64, 70]), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([np.uint8, np.int8, np.int16, np.int32]), st.booleans(),
       st.integers(0, 2 ** 32 - 1))
def test_window_sums_of_many_images_equal_numpy(n, k, stride, dt, extreme, seed):
    """`kernels.window_sums_kernel` past one int16 fold (`_FOLD16` images), every input at
    255 from its zero point (the int16 lanes' largest sums) or random, against NumPy over
    the zero-point-padded input; int32 inputs whose values cross 2^15 (the lanes take
    ``x - zp`` modulo 2^16)."""
    from npusim.sim import kernels as K

    rng = np.random.default_rng(seed)
    info = np.iinfo(dt)
    zp = {np.uint8: 0, np.int32: 32700}.get(dt, int(info.min))
    top = zp + 255
    x = np.full((n, 5, 6, 3), top, dt) if extreme else \
        rng.integers(zp, top + 1, size=(n, 5, 6, 3)).astype(dt)
    pad = k // 2
    ho, wo = (5 + 2 * pad - k) // stride + 1, (6 + 2 * pad - k) // stride + 1
    s = np.zeros((k, k, 3), np.int64)
    cnt = np.zeros((k, k, 3), np.int64)
    K.window_sums_kernel(x, zp, stride, pad, ho, wo, s, cnt)
    xp = np.pad(x.astype(np.int64) - zp, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    r = 1 + np.arange(n) % 4
    for i in range(k):
        for j in range(k):
            win = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
            assert (s[i, j] == np.einsum("b,bhwc->c", r, win)).all()
            assert (cnt[i, j] == (win != 0).sum(axis=(0, 1, 2))).all()


def _wrap64(v: int) -> int:
    """A Python integer modulo 2^64 as a signed int64."""
    return (v + 2 ** 63) % 2 ** 64 - 2 ** 63


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 40), st.data())
def test_projected_check_equals_python_integers(n, groups, og, kh, kw, cg, data):
    """The check's weight side (`int8_engine.weights_projection`, `project`): the projection
    of every image's exact column sums (window sums times the column's int8 weights over its
    group's channels) by random int64 multipliers, modulo 2^64, against Python integers;
    extreme window sums (2^46), multipliers (±2^63) and weights (-128, 127) included."""
    from npusim.sim.int8_engine import project, weights_projection

    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    top = data.draw(st.sampled_from([3, 2 ** 20, 2 ** 46]))
    shape = (n, kh, kw, groups * cg)  # random values with every bit, some extremes and zeros
    s = np.where(rng.random(shape) < 0.3, rng.choice([-top, top, 0], size=shape),
                 rng.integers(-top, top + 1, size=shape))
    q = groups * og * data.draw(st.integers(1, 2))  # columns: groups repeat every o_n = q / reps
    o_n = data.draw(st.sampled_from([q, groups * og]))
    wq = rng.choice([-128, 127, 0, rng.integers(-128, 128)], size=(q, cg, kh, kw))
    plan = int8_engine.Int8Conv(None, wq, o_n, 0, 0, kh, kw, 1, 0, groups, False,
                                np.zeros(1, np.int64))
    ends = [-2 ** 63, 2 ** 63 - 1, 1, -1]
    r = np.where(rng.random((2, q)) < 0.2, rng.choice(ends, size=(2, q)),
                 rng.integers(-2 ** 63, 2 ** 63 - 1, size=(2, q), dtype=np.int64))
    u = weights_projection(plan, "test", r)
    for b in range(n):
        got = project(u, s[b:b + 1])
        for p in range(2):
            want = 0
            for jq in range(q):
                c0 = ((jq % o_n) // (o_n // groups)) * cg
                col = sum(int(s[b, i, j, c0 + c]) * int(wq[jq, c, i, j]) for i in range(kh)
                          for j in range(kw) for c in range(cg))
                want += int(r[p, jq]) * col
            assert int(got[p]) == _wrap64(want)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 64), st.sampled_from([1, 3, 2 ** 20, 2 ** 43]),
       st.integers(0, 61), st.integers(0, 2 ** 32 - 1))
def test_column_check_sees_any_wrong_column(n, q, top, bit, seed):
    """`ColumnCheck.verify` passes the exact per-image column sums and fails them with any one
    column changed, by an odd amount or by a multiple of a high power of two (the odd
    multipliers see it modulo 2^64: image weights up to 4 keep 2^61 * 4 below 2^64), and with
    values moved between two columns."""
    from npusim.sim.int8_engine import ColumnCheck, projection

    rng = np.random.default_rng(seed)
    sums = rng.integers(-top, top + 1, size=(n, q))
    r = projection(q)
    assert r.shape == (2, q) and (r & 1).all()  # odd: no power of two below 2^64 vanishes
    c = (1 + np.arange(n) % 4) @ sums
    e = np.array([_wrap64(sum(int(r[p, j]) * int(c[j]) for j in range(q))) for p in range(2)],
                 np.int64)
    check = ColumnCheck(r, e)
    check.verify(sums)
    b, j = rng.integers(0, n), rng.integers(0, q)
    for delta in (1, -3, 1 << bit):
        bad = sums.copy()
        bad[b, j] += delta
        with pytest.raises(InexactError):
            check.verify(bad)
    if q > 1:  # a value moved to another column
        bad = sums.copy()
        bad[b, j] -= 5
        bad[b, (j + 1) % q] += 5
        with pytest.raises(InexactError):
            check.verify(bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 300), st.integers(1, 200), st.integers(0, 2 ** 32 - 1))
def test_image_column_sums_equal_numpy(n, rows, q, seed):
    """`kernels.image_column_sums_kernel` (tasks of `_SUM_COLUMNS` columns per image) against
    NumPy's int64 sum of each image's rows, on float32 integers up to 2^24."""
    from npusim.sim import kernels as K

    rng = np.random.default_rng(seed)
    g = rng.integers(-2 ** 24, 2 ** 24 + 1, size=(n * rows, q)).astype(np.float32)
    out = np.full((n, q), 7, np.int64)
    K.image_column_sums_kernel(g, n, out)
    np.testing.assert_array_equal(out, g.astype(np.int64).reshape(n, rows, q).sum(axis=1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3 * (1 << 16) + 5), st.sampled_from([np.int64, np.int32, np.int16]),
       st.integers(0, 2 ** 32 - 1))
def test_extremes_kernel_equals_numpy(size, dtype, seed):
    """`kernels.extremes_kernel` (one pass in blocks of `_EXTREME_BLOCK`) against NumPy's
    min and max, the extremes planted in any block, the last one included."""
    from npusim.sim import kernels as K

    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    a = rng.integers(-1000, 1000, size=size).astype(dtype)
    a[rng.integers(0, size)] = info.min
    a[rng.integers(0, size)] = info.max if rng.random() < 0.5 else 1000
    assert K.extremes_kernel(a) == (a.min(), a.max())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(2, 8),
       st.sampled_from([1, 2, 3, 5]), st.integers(1, 3), st.data())
def test_depthwise_convs_take_the_own_kernel_and_are_exact(n, h, wd, c, k, stride, data):
    """A depthwise conv (groups = channels = outputs) is prepared for the engine's own kernel
    (`kernels.depthwise_sums_kernel`, no oneDNN, no weight split even at +-128 weights on a
    pair-saturating CPU) and its sums equal the int64 reference; the engine's checks pass."""
    pad = data.draw(st.integers(0, k - 1))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    if ho < 1 or wo < 1:
        return
    lo, hi = data.draw(st.sampled_from([(0, 255), (-128, 127), (0, 15), (3, 200)]))
    zp = data.draw(st.sampled_from([0, 3, -5, 128]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([lo, hi, rng.integers(lo, hi + 1)], size=(n, c, h, wd)) + zp
    w = rng.choice([-128, 127, 0, 1, rng.integers(-128, 128)], size=(c, 1, k, k))
    plan = _prepare(w, stride, pad, c, zp, lo + zp, hi + zp)
    if plan is None:  # refused: a span over 255 or the float32 bound
        assert max(hi + zp, zp) - min(lo + zp, zp) > 255 or \
            max(hi, -lo) * int(np.abs(w).reshape(c, -1).sum(axis=1).max()) >= 2 ** 24
        return
    assert plan.dw is not None and plan.radix == 0 and plan.packed is None
    res = int8_conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), plan, (ho, wo))
    g = res.g.astype(np.int64).reshape(n, ho, wo, c).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(g, ref_conv(x - zp, w, stride, pad, groups=c))
    res.verify(g.sum(axis=(2, 3)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 2), st.integers(1, 5), st.integers(60, 400), st.integers(1, 4),
       st.sampled_from([1, 3]), st.integers(1, 2), st.sampled_from([0, 128]), st.data())
def test_sums_past_float32_range_split_over_input_channels(n, h, c, o, k, stride, zp, data):
    """A conv whose sums may reach 2^24 (beyond float32's exact integers) is planned as convs
    over ranges of input channels, each provably below 2^24, summed in int32: equal to the
    int64 reference, with the engine's checks passing and the non-zero count exact."""
    pad = k // 2
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(n, c, h, h)).astype(np.int64)
    w = rng.choice([-128, 127, 0, rng.integers(-128, 128)], size=(o, c, k, k)).astype(np.int64)
    plan = _prepare(w, stride, pad, 1, zp, 0, 255)
    bound = max(255 - zp, zp) * int(np.abs(w).reshape(o, -1).sum(axis=1).max())
    if bound < 2 ** 24:
        assert plan is not None and not plan.parts
        return
    assert plan is not None and len(plan.parts) >= 2
    assert [p[0] for p in plan.parts][0] == 0 and plan.parts[-1][1] == c
    assert all(a[1] == b[0] for a, b in zip(plan.parts, plan.parts[1:]))  # contiguous ranges
    ho = (h + 2 * pad - k) // stride + 1
    res = int8_conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), plan, (ho, ho))
    assert res.g.dtype == np.int32
    g = res.g.astype(np.int64).reshape(n, ho, ho, o).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(g, ref_conv(x - zp, w, stride, pad))
    res.verify(g.sum(axis=(2, 3)))
    nz = ref_conv((x != zp).astype(np.int64), (w != 0).astype(np.int64), stride, pad)
    assert res.nonzero_macs == int(nz.sum())


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int8_case(), st.booleans())
def test_engine_sums_equal_int64_reference(case, signs):
    """Sums, positive product sums, the check sums and the non-zero count: exact
    for any zero point, padding (which reads the zero point), stride and groups."""
    x, w, stride, pad, groups, zp, (lo, hi) = case
    plan = _prepare(w, stride, pad, groups, zp, lo, hi, signs=signs)
    if plan is None:  # refused: a span over 255, a sign split it cannot do, an f32 bound
        assert (max(hi, zp) - min(lo, zp) > 255) or (pad and pad >= w.shape[2]) or (
            signs and (lo < zp or groups > 1))
        return
    ho = (x.shape[2] + 2 * pad - w.shape[2]) // stride + 1
    wo = (x.shape[3] + 2 * pad - w.shape[3]) // stride + 1
    n, o = x.shape[0], w.shape[0]
    res = int8_conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), plan, (ho, wo))
    g = res.g.astype(np.int64).reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)
    xs = x - zp
    np.testing.assert_array_equal(g[:, :o], ref_conv(xs, w, stride, pad, groups))
    if signs:
        assert g.shape[1] == 2 * o
        np.testing.assert_array_equal(g[:, o:], ref_conv(xs, np.maximum(w, 0), stride, pad))
    res.verify(g.sum(axis=(2, 3)))
    if g.size and np.any(g):  # the check must see a changed value
        bad = g.sum(axis=(2, 3))
        bad[-1, np.argmax(np.abs(bad[-1]))] += 1
        with pytest.raises(InexactError):
            res.verify(bad)
    # products with both operands non-zero, counted one by one
    nz = ref_conv((xs != 0).astype(np.int64), (w != 0).astype(np.int64), stride, pad, groups)
    assert res.nonzero_macs == int(nz.sum())


def test_refuses_what_int8_or_float32_cannot_hold():
    assert _prepare(np.full((1, 1, 1, 1), 200), 1, 0, 1, 0, 0, 255) is None  # weight
    assert _prepare(np.ones((1, 1, 1, 1)), 1, 0, 1, 0, -200, 200) is None  # span
    big = np.full((1, 600, 3, 3), 127)  # 255 * 127 * 5400 >= 2^24: split over channels
    assert len(_prepare(big, 1, 0, 1, 0, 0, 255).parts) >= 2
    one = np.full((1, 1, 23, 23), 127)  # one channel alone reaches 2^24: no split helps
    assert _prepare(one, 1, 0, 1, 0, 0, 255) is None
    huge = np.full((1, 7400, 3, 3), 127)  # 255 * 127 * 66600 >= 2^31: not even int32
    assert _prepare(huge, 1, 0, 1, 0, 0, 255) is None
    grouped = np.full((2, 300, 3, 3), 127)  # groups: not split
    assert _prepare(grouped, 1, 0, 2, 0, 0, 255) is None
    ok = np.full((1, 500, 1, 1), 127)  # 255 * 127 * 500 < 2^24
    assert prepare_int8_conv(ok, 1, 0, 1, 0, 0, 255, kind="exact") is not None


def _case(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(2, 6, 6, 3))
    w = rng.integers(-127, 128, size=(4, 3, 3, 3))
    return x, w, _prepare(w, 1, 1, 1, 0, 0, 255)


def test_verification_catches_one_wrong_value(monkeypatch):
    """One output off by 3 (what a saturating intermediate would do): the column sums fail."""
    x, w, plan = _case()
    real = int8_engine._run

    def saturating(*a):
        y, _ = real(*a)
        y = y.copy()
        y[1, 4, 2, 3] -= 3
        return y, None

    monkeypatch.setattr(int8_engine, "_run", saturating)
    monkeypatch.setattr(int8_engine, "_spot_check", lambda *a: None)  # the sums alone
    res = int8_conv(x, plan, (6, 6))
    with pytest.raises(InexactError):
        res.verify(res.g.astype(np.int64).reshape(2, 36, -1).sum(axis=1))


def test_spot_check_catches_misplaced_values(monkeypatch):
    """Rows and columns of the output swapped (the sums cannot see it): the spot check does."""
    x, w, plan = _case()
    real = int8_engine._run
    monkeypatch.setattr(int8_engine, "_run", lambda *a: (np.ascontiguousarray(
        real(*a)[0].transpose(0, 2, 1, 3)), None))
    with pytest.raises(InexactError):
        int8_conv(x, plan, (6, 6))


def test_spot_check_on_a_column_subset_catches_misplaced_values(monkeypatch):
    """A budget of one column per pixel (deep layers check a subset): still caught, and a
    correct result still passes."""
    x, w, plan = _case()
    monkeypatch.setattr(int8_engine, "_SPOT_MACS", 1)
    monkeypatch.setattr(int8_engine, "_CALLS", itertools.count(1))  # the same picks every run
    int8_conv(x, plan, (6, 6))  # exact: passes
    real = int8_engine._run
    monkeypatch.setattr(int8_engine, "_run", lambda *a: (np.ascontiguousarray(
        real(*a)[0].transpose(0, 2, 1, 3)), None))
    with pytest.raises(InexactError):
        int8_conv(x, plan, (6, 6))


@pytest.mark.slow
def test_a_failed_check_falls_back_to_the_float_engine(monkeypatch, caplog):
    """An engine result its checks reject never reaches the user: the layer is recomputed
    with the float engine (simulator and `engines.exact_conv`), with a warning."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(2, 3, 6, 6))
    w = rng.integers(-127, 128, size=(4, 3, 3, 3))
    bias = rng.integers(-3000, 3000, size=4)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = NPUConfig.preset("edge16")
    good = Simulator(cfg).run(prog, x).outputs["y"]
    real = int8_engine._run

    def off(packed):  # one weight byte off in the engine's own kernel: its column is wrong
        wb = packed.wb.copy()
        wb[0] += 1
        return dataclasses.replace(packed, wb=wb)

    def wrong(xu, zp, packed, *a):  # the column sums the kernel makes see its wrong values
        if isinstance(packed, int8_tiles.TileWeights):
            return real(xu, zp, off(packed), *a)
        y, sums = real(xu, zp, packed, *a)  # oneDNN: one value off
        y = y.copy()
        y[0, 2, 3, 1] += 1
        return y, sums

    real_fused = int8_tiles.conv_epilogue

    def wrong_fused(xu, zp, packed, *a):
        return real_fused(xu, zp, off(packed), *a)

    monkeypatch.setattr(int8_engine, "_run", wrong)
    monkeypatch.setattr(int8_tiles, "conv_epilogue", wrong_fused)  # a single run's fused path
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(Simulator(cfg).run(prog, x).outputs["y"], good)
        np.testing.assert_array_equal(engines.exact_conv(x, w, 1, 1), ref_conv(x, w, 1, 1))
    assert sum("recomputed with the float engine" in r.message for r in caplog.records) == 2


@pytest.mark.skipif(not int8_tiles.available(), reason="the pooled bound runs on the own tiles")
@pytest.mark.parametrize("n", [1, 3])
def test_a_pooled_bound_that_clears_some_pixels_passes_the_checks(monkeypatch, n):
    """Where the pooled bound clears some pixels but not all (inputs 0-2 on the left, whose
    window sums the check must leave out, 255 on the right), the positive columns' check
    covers only the pixels computed: the layer passes its checks (no fallback) with the
    outputs and events of the run without the bound."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(n, 8, 8, 8))
    x[..., 5:] = 255
    w = rng.integers(-127, 128, size=(16, 8, 3, 3))
    prog = conv_program(w, rng.integers(-300, 300, size=16), x.shape[1:], padding=1,
                        requant=False)
    cfg = NPUConfig.preset("edge16").with_overrides({
        "precision.acc_bits": 16, "precision.pe_acc_bits": 16, "precision.overflow": "wrap"})
    good = Simulator(cfg).run(prog, x)
    shares, warned = [], []
    real = int8_tiles.conv_risk

    def risk(*a):
        out = real(*a)
        shares.append(out[2])
        return out

    monkeypatch.setattr(int8_tiles, "conv_risk", risk)
    monkeypatch.setattr(int8_engine, "_BOUND_MACS", 0)
    monkeypatch.setattr(accumulate.log, "warning", lambda *a, **k: warned.append(a))
    got = Simulator(cfg).run(prog, x)
    assert shares and 0 < shares[0] < 1 and not warned
    np.testing.assert_array_equal(got.outputs["y"], good.outputs["y"])
    cols = ["acc_overflows", "pe_overflows", "acc_min", "acc_max"]
    assert got.stats[cols].equals(good.stats[cols]) and good.stats["acc_overflows"].sum() > 0


@pytest.mark.skipif(not int8_tiles.available(), reason="the pooled bound runs on the own tiles")
def test_a_pooled_bound_below_a_positive_sum_is_caught(monkeypatch, caplog):
    """A layer at risk on the own tiles computes the positive product sums only where the
    pooled bound does not clear the pixel; a bound from a wrong pooling (every input at the
    zero point: 0 everywhere) would clear pixels that overflow. The spot-checked pixels'
    positive sums, always computed, catch it: the layer is recomputed with the float
    engine, with the very outputs and events of the run with the true bound."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(2, 8, 6, 6))
    w = rng.integers(-127, 128, size=(16, 8, 3, 3))
    bias = rng.integers(-3000, 3000, size=16)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = NPUConfig.preset("edge16").with_overrides({
        "precision.acc_bits": 16, "precision.pe_acc_bits": 16, "precision.overflow": "wrap"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_engine, "_BOUND_MACS", 0)
        good = Simulator(cfg).run(prog, x)
    assert good.stats["acc_overflows"].sum() > 0
    pooled = []
    real = int8_tiles.pooled_input

    def wrong(xu, zp, *a):
        pooled.append(1)
        return np.full_like(real(xu, zp, *a), zp)

    monkeypatch.setattr(int8_tiles, "pooled_input", wrong)
    monkeypatch.setattr(int8_engine, "_BOUND_MACS", 0)  # however small the layer
    with caplog.at_level("WARNING"):
        bad = Simulator(cfg).run(prog, x)
    assert pooled
    assert any("the pooled bound is below a positive product sum" in r.message
               for r in caplog.records)
    np.testing.assert_array_equal(bad.outputs["y"], good.outputs["y"])
    cols = ["acc_overflows", "pe_overflows", "acc_min", "acc_max"]
    assert bad.stats[cols].equals(good.stats[cols])


def test_exact_conv_uses_int8_only_where_the_engine_says(monkeypatch):
    """"auto" and "int8" compute through oneDNN; "float" never calls it; all agree."""
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, size=(3, 8, 9, 9))
    w = rng.integers(-128, 128, size=(5, 8, 3, 3))
    calls = []
    real = int8_engine._run
    monkeypatch.setattr(int8_engine, "_run", lambda *a: calls.append(1) or real(*a))
    for name in ("auto", "int8", "float"):
        calls.clear()
        got = engines.exact_conv(x, w, 2, 1, engine=name)
        assert bool(calls) == (name != "float")
        np.testing.assert_array_equal(got, ref_conv(x, w, 2, 1))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(["os", "ws"]), st.integers(10, 22),
       st.sampled_from(["exact", "wrap", "saturate"]), st.booleans())
def test_simulator_int8_engine_equals_float_engine_and_oracle(seed, dataflow, bits, mode, relu):
    """The simulator's int8 path (fused requant, risk bounds from sign columns, re-simulation)
    against the float engine and the oracle: values and overflow events."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(2, 3, 6, 6))
    w = rng.choice([-127, 127, 0, rng.integers(-127, 128)], size=(4, 3, 3, 3))
    bias = rng.integers(-3000, 3000, size=4)
    cfg = NPUConfig.preset("edge16").with_overrides({
        "array.dataflow": dataflow, "array.rows": 5, "precision.acc_bits": max(bits, 17),
        "precision.pe_acc_bits": max(bits, 17), "precision.overflow": mode})
    for requant in (False, True):
        prog = conv_program(w, bias, x.shape[1:], padding=1, requant=requant, y_signed=not relu)
        sim = Simulator(cfg, engine="int8")
        assert sim.plan(prog)[0].prep is not None
        fast = sim.run(prog, x)
        flt = Simulator(cfg, engine="float").run(prog, x)
        np.testing.assert_array_equal(fast.outputs["y"], flt.outputs["y"])
        cols = ["pe_overflows", "acc_overflows", "nonzero_macs", "acc_min", "acc_max",
                "sequential_outputs"]
        assert fast.stats[cols].equals(flt.stats[cols])
        if not requant:
            b = max(bits, 17)
            ref, pe_ovf, acc_ovf = naive.conv2d_acc(x, w, bias, 1, 1, 1, 0, dataflow=dataflow,
                                                    rows=5, pe_bits=b, pe_mode=mode, acc_bits=b,
                                                    acc_mode=mode)
            np.testing.assert_array_equal(fast.outputs["y"], ref)
            row = fast.stats.iloc[0]
            assert row["acc_overflows"] == acc_ovf
            if dataflow == "ws":
                assert row["pe_overflows"] == pe_ovf


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(["dense", "grouped", "depthwise"]),
       st.booleans(), st.sampled_from([(32, "wrap", True), (18, "wrap", False),
                                       (17, "wrap", False), (20, "saturate", True),
                                       (17, "wrap", True), (16, "saturate", True)]),
       st.integers(0, 2), st.integers(1, 2), st.sampled_from([0, 3]), st.booleans())
def test_fused_epilogue_equals_the_shared_sums(seed, kind, requant, acc, pad, stride, zp,
                                               bounded):
    """A single configuration consumes the own kernels' sums where they are made
    (`int8_engine.int8_conv_fused`: exact layers, wrapped ones without event counts, and
    layers with risk whose outputs come in 16s, their flags made there too, `bounded`: with
    the pooled bound on the positive sums however small the layer); a sweep keeps them to
    share (`run_many`): outputs and every statistic agree, event counts included."""
    from npusim.sim.simulator import run_many

    rng = np.random.default_rng(seed)
    g = 1 if kind == "dense" else 4
    cg = 1 if kind == "depthwise" else int(rng.integers(1, 9))
    o = 4 if kind == "depthwise" else g * int(rng.choice([16, 32, rng.integers(1, 40)]))
    x = rng.choice([zp, 255, rng.integers(0, 256)], size=(int(rng.integers(1, 4)), g * cg, 7, 6))
    w = rng.choice([-127, 127, 0, rng.integers(-127, 128)], size=(o, cg, 3, 3))
    bias = rng.integers(-3000, 3000, size=o)
    prog = conv_program(w, bias, x.shape[1:], zp_x=zp, stride=stride, padding=pad, groups=g,
                        requant=requant)
    bits, mode, events = acc
    cfg = NPUConfig.preset("edge16").with_overrides({
        "precision.acc_bits": bits, "precision.pe_acc_bits": bits, "precision.overflow": mode})
    calls, warned, risky = [], [], []
    real = accumulate.int8_conv_fused
    real_risky = accumulate._fused_risk_entry
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(accumulate, "int8_conv_fused", lambda *a: calls.append(1) or real(*a))
        mp.setattr(accumulate, "_fused_risk_entry", lambda *a: risky.append(1) or real_risky(*a))
        if bounded:
            mp.setattr(int8_engine, "_BOUND_MACS", 0)
        # no layer may pass only by the fallback (a failed check recomputes it, correctly)
        mp.setattr(accumulate.log, "warning", lambda *a, **k: warned.append(a))
        sim = Simulator(cfg, count_events=events)
        one = sim.run(prog, x)
        prep = sim.plan(prog)[0].prep
        shared = run_many([Simulator(cfg, count_events=events) for _ in range(2)], prog, x)[0]
    assert not warned
    np.testing.assert_array_equal(one.outputs["y"], shared.outputs["y"])
    assert one.stats.equals(shared.stats)
    if prep is not None and int8_engine.fusable(prep) and (
            bits == 32 or not events or int8_engine.fusable(prep, risk=True)):
        # the fused path ran (no risk at 32 bits; a wrap shortcut without events; sign
        # columns in 16s on VNNI)
        assert calls
    if prep is not None and events and bits < 32 and int8_engine.fusable(prep, risk=True):
        assert risky  # at 20 bits and below every such layer is at risk


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.booleans())
def test_run_many_equals_separate_runs(seed, requant):
    """A sweep sharing engine sums (`run_many`) gives every configuration exactly its own
    run."""
    from npusim.sim.simulator import run_many

    rng = np.random.default_rng(seed)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(3, 3, 5, 5))
    w = rng.choice([-127, 127, 0, rng.integers(-127, 128)], size=(4, 3, 3, 3))
    bias = rng.integers(-3000, 3000, size=4)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=requant)
    base = NPUConfig.preset("edge16")
    cfgs = [base] + [base.with_overrides({"precision.acc_bits": b, "precision.pe_acc_bits": b,
                                          "precision.overflow": m, "array.dataflow": d})
                     for b in (17, 19, 32) for m in ("wrap", "saturate") for d in ("os", "ws")]
    many = run_many([Simulator(c) for c in cfgs], prog, x, batch_size=2)
    for cfg, got in zip(cfgs, many):
        one = Simulator(cfg).run(prog, x, batch_size=2)
        np.testing.assert_array_equal(got.outputs["y"], one.outputs["y"])
        assert got.stats.equals(one.stats)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int8_case())
def test_pair_saturating_cpus_split_wide_weights_and_stay_exact(case):
    """On AVX2 without VNNI (pairs of u8 x s8 products saturate at int16) a conv whose pairs
    could pass 2^15 - 1 runs as ``64 * hi + lo``, and a strided 1x1 conv at stride 1 on the
    subsampled input; the sums stay exact either way. Depthwise convs take the engine's own
    kernel (no split, no subsampling)."""
    x, w, stride, pad, groups, zp, (lo, hi) = case
    plan = prepare_int8_conv(w, stride, pad, groups, zp, lo, hi, kind="pairs")
    if plan is None:
        return
    u_max = max(hi, zp) - min(lo, zp)
    onednn = not (groups > 1 and w.shape[1] == 1 and w.shape[0] == groups)
    assert (plan.dw is None) == onednn
    assert plan.radix == (64 if onednn and 2 * u_max * np.abs(w).max() > 2 ** 15 - 1 else 0)
    assert plan.subsample == (stride if onednn and stride > 1 and w.shape[2] == w.shape[3] == 1
                              else 1)
    ho = (x.shape[2] + 2 * pad - w.shape[2]) // stride + 1
    wo = (x.shape[3] + 2 * pad - w.shape[3]) // stride + 1
    res = int8_conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), plan, (ho, wo))
    g = res.g.astype(np.int64).reshape(x.shape[0], ho, wo, -1).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(g, ref_conv(x - zp, w, stride, pad, groups))
    res.verify(g.sum(axis=(2, 3)))


@pytest.mark.parametrize("mode", ["wrap", "saturate"])
@pytest.mark.parametrize("requant", [False, True])
def test_every_engine_gives_identical_outputs_and_stats(mode, requant):
    """"auto", "reference", "float" and "int8" on a layer that overflows a narrow
    accumulator: the same outputs and statistics (the reference engine runs every output
    sequentially; the others only the flagged ones), and each says which engine it used."""
    rng = np.random.default_rng(7)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(3, 8, 6, 6))
    w = rng.choice([-127, 127, 0, rng.integers(-127, 128)], size=(6, 8, 3, 3))
    bias = rng.integers(-3000, 3000, size=6)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=requant)
    cfg = NPUConfig.preset("edge16").with_overrides({
        "array.dataflow": "ws", "array.rows": 5, "precision.acc_bits": 18,
        "precision.pe_acc_bits": 17, "precision.overflow": mode})
    res = {}
    for name in engines.ENGINES:
        sim = Simulator(cfg, engine=name)
        assert sim.engine_used == ("int8" if name == "auto" else name)
        res[name] = sim.run(prog, x)
    ref = res["reference"]
    assert ref.stats["pe_overflows"].sum() + ref.stats["acc_overflows"].sum() > 0
    assert ref.stats["sequential_outputs"].iloc[0] == ref.outputs["y"].size
    for name, got in res.items():
        np.testing.assert_array_equal(got.outputs["y"], ref.outputs["y"])
        same = got.stats.drop(columns="sequential_outputs")
        assert same.equals(ref.stats.drop(columns="sequential_outputs")), name
    assert res["int8"].stats.equals(res["float"].stats)


@pytest.mark.parametrize("requant", [False, True])
def test_a_layer_split_over_input_channels_equals_the_float_engine(requant, caplog):
    """A layer whose exact sums may pass 2^24 runs on the int8 engine as a split plan (it used
    to fall back to the float engine): outputs and statistics equal the float engine's, in
    the exact mode and in a wrap mode whose events need no walk (`count_events=False`)."""
    rng = np.random.default_rng(3)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(2, 160, 5, 5))
    w = rng.choice([-128, 127, 0, rng.integers(-128, 128)], size=(4, 160, 3, 3))
    prog = conv_program(w, rng.integers(-3000, 3000, size=4), x.shape[1:], padding=1,
                        requant=requant)
    for over, count in (({}, True), ({"precision.acc_bits": 20, "precision.pe_acc_bits": 20,
                                       "precision.overflow": "wrap"}, False)):
        cfg = NPUConfig.preset("edge16").with_overrides(over)
        sim = Simulator(cfg, engine="int8", count_events=count)
        got = sim.run(prog, x)
        assert sim.plan(prog)[0].prep.parts  # the engine ran it, split, and its checks passed
        assert "recomputed with the float engine" not in caplog.text
        want = Simulator(cfg, engine="float", count_events=count).run(prog, x)
        np.testing.assert_array_equal(got.outputs["y"], want.outputs["y"])
        assert got.stats.equals(want.stats)


def test_an_unknown_engine_is_a_one_line_error():
    with pytest.raises(SimulationError, match="engine must be one of auto, reference, float, "
                                              "int8; got 'gpu'") as e:
        Simulator(NPUConfig.preset("edge16"), engine="gpu")
    assert "\n" not in str(e.value)


def test_a_missing_int8_engine_is_an_error_for_int8_and_a_warning_for_auto(monkeypatch):
    broken = Int8Support(None, "torch.ops.onednn.qconv2d_pointwise unusable (RuntimeError)")
    monkeypatch.setattr(int8_engine, "probe", lambda: broken)
    with pytest.raises(SimulationError, match="engine 'int8' is unavailable here: torch.ops"):
        Simulator(NPUConfig.preset("edge16"), engine="int8")
    with pytest.warns(RuntimeWarning, match="int8 engine unavailable .*qconv2d_pointwise"):
        sim = Simulator(NPUConfig.preset("edge16"), engine="auto")
    assert sim.engine_used == "float"


def test_probe_reports_a_broken_private_op(monkeypatch):
    """torch's private oneDNN op raising (renamed, or missing in this build): the probe
    says the engine is unusable and why; it does not raise."""
    def broken(*a):
        raise RuntimeError("No such operator onednn::qconv2d_pointwise")

    monkeypatch.setattr(int8_engine, "_cpu_int8_kind", lambda: "exact")
    monkeypatch.setattr(int8_engine, "_run", broken)
    sup = int8_engine._probe()
    assert not sup.ok and sup.cpu and "qconv2d_pointwise" in sup.reason


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 2, 5, 7, 23, 40]),
       st.sampled_from([1, 2, 3, 4, 16, 17, 32]), st.integers(1, 3),
       st.sampled_from(["exact", "signs", "risk", "risk_pe", "wrap"]),
       st.sampled_from([8, 16, 20, 40]),
       st.sampled_from(["half_up", "half_away", "half_even"]), st.data())
def test_epilogue_kernel_equals_a_walk_over_every_output(n, pixels, o_n, nch, case, bits,
                                                          rounding, data):
    """`kernels.gemm_epilogue_kernel` against Python integers: accumulators (wrapped where
    asked) requantized, the bits each output's bounds need (float64 lanes in the kernel), the
    extremes of all and of the unflagged accumulators, and the check's column sums (per
    chunk weighted 1..nch), on sums up to 2^24 and biases up to 2^52, blocks of one pixel to
    several of the flat task's runs (`kernels._flat_epilogue_task`), risk with outputs in
    16-lane blocks (`kernels._row_risk_task`) and without. "signs": the sign
    columns of a plan shared with a risky configuration, read by a configuration without risk
    (only the check's sums take them)."""
    # |chunk sum| of every chunk together below 2^24, as the engine's bound; or small sums and
    # biases, whose products with the multipliers stay below 2^52 (the float64 paths)
    small = data.draw(st.booleans())
    big = (1 << 52) - 1
    bias = [data.draw(st.sampled_from([0, 1, -1, 5000, -(1 << 18)] if small else
                                      [0, 1, -1, 5000, -(1 << 23), 1 << 31, big, -big]))
            for _ in range(o_n)]
    _check_epilogue(n, pixels, o_n, nch, case, bits, rounding, data.draw(st.integers(0, 2 ** 32 - 1)),
                    small, bias, data.draw(st.integers(1, pixels)))


@pytest.mark.parametrize("o_n", [1, 3, 16, 17])
@pytest.mark.parametrize("case", ["risk", "risk_pe", "exact", "wrap"])
def test_epilogue_kernel_on_long_blocks(o_n, case):
    """The epilogue on blocks of many pixels (the flat task's runs, `kernels._flat_epilogue_task`,
    meet each lane many times; with risk, the per-pixel task, and at 16 outputs the row task,
    `kernels._row_risk_task`, past its int32 sums' fold), some outputs flagged and some
    not, at either level (sums below 2^19, an 18-bit acc and a 14-bit pe level, half_up: the
    float64 paths), in one block and in several."""
    for nb in (1, 3):
        _check_epilogue(2, 150, o_n, 1, case, 18, "half_up", 7 + nb, True,
                        [0, 5000, -1, -(1 << 18)] * 5, nb, pe_bits=14)


@pytest.mark.parametrize("acc_bits", [8, 16, 17, 25, 33, 64])
@pytest.mark.parametrize("pe_bits", [None, 12, 16, 26])
def test_risk_thresholds_flag_exactly_where_the_bound_bits_exceed_the_widths(acc_bits,
                                                                            pe_bits):
    """`kernels.risk_thresholds` (two int32 compares per output in the fused risk task)
    against the bound bits' definition (`arith.bits_needed`) at every edge: sums one or two
    either side of each range's limit, biases at 0, +-1, the limits (up to 2^51) and past
    2^31."""
    from npusim.ir import arith
    from npusim.sim import kernels as K

    pe_risk = pe_bits is not None
    pe = pe_bits or 64
    lim = (1 << 24) - 1  # the engine's sums are below 2^24

    def near(*edges):
        return sorted({min(max(e + d, 0), lim) for e in edges for d in (-2, -1, 0, 1, 2)})

    edge = 1 << min(acc_bits - 1, 51)  # the engine takes biases below 2^52
    for bias in (0, 1, -1, edge, -edge, 3 << 31, -(3 << 31)):
        tp, tn = K.risk_thresholds(bias, acc_bits, pe, pe_risk)
        ha, hp = 1 << (acc_bits - 1), 1 << (pe - 1)
        for pos in near(0, ha - 1 - bias, hp - 1, lim):
            for neg in near(0, bias + ha, hp, lim):
                want = arith.bits_needed(min(bias - neg, 0), max(bias + pos, 0)) > acc_bits or (
                    pe_risk and arith.bits_needed(-neg, pos) > pe)
                assert (pos > tp or neg > tn) == want, (bias, pos, neg)


@pytest.mark.parametrize("m0, shift", [(1 << 30, 40), (1 << 20, 30)])
def test_risk_epilogue_sums_columns_past_int32_lanes(m0, shift):
    """Blocks of 300 pixels x 64 outputs, every sum near 2^24: each lane of the fused risk
    task (`kernels.fused_risk_task`) and of the epilogue kernel's row task
    (`kernels._row_risk_task`) meets 300 of them, far past what their int32 column-sum lanes
    hold, so they must fold into int64 (`kernels._SUM32_RUNS`); the column sums against
    NumPy's, the fused task's extremes and outputs against the epilogue kernel's, which
    `_check_epilogue` holds to Python integers. With m0 = 2^30 the products pass 2^52 and both
    take the integer rule; with 2^20 the float64 one."""
    from npusim.ir import arith
    from npusim.sim import kernels as K
    from npusim.sim.accumulate import Requant

    pixels, o_n, lim = 300, 64, (1 << 24) - 1
    rng = np.random.default_rng(5)
    pos = rng.integers(lim - 9, lim + 1, (pixels, o_n))
    neg = np.where(np.arange(o_n) % 2, 0, rng.integers(0, 10, (pixels, o_n)))  # some near -2^24
    neg[:, ::4] = lim - rng.integers(0, 10, (pixels, o_n // 4))
    g = np.concatenate([pos - neg, pos], axis=1).astype(np.float32)
    bias = rng.integers(-5000, 5000, o_n)
    req = Requant.of(np.full(o_n, m0), np.full(o_n, shift), np.zeros(o_n, np.float32),
                     False, arith.rounding_code("half_up", "fixed"), 32, 0, -128, 127)
    lv = K.LevelSpec(K.OS, 16, 32, K.MODE_CODES["wrap"], 26, K.MODE_CODES["wrap"])
    arrays = [np.empty((pixels, o_n), np.int8), np.empty((2, pixels, o_n), np.uint8),
              np.empty((1, 1, 4), np.int64), np.empty((1, 1, 2 * o_n), np.int64)]
    K.gemm_epilogue_kernel(g, o_n, pixels, bias, True, False, lv, True, req.rec, arrays[0],
                           arrays[1][0], arrays[1][1], arrays[2], arrays[3], 0, 1)
    got = [np.empty_like(a) for a in arrays]
    got[1] = np.empty((pixels, o_n), np.uint8)
    rows = np.empty(pixels, np.int32)
    _fused_risk_tasks(g, o_n, pixels, bias, False, lv, True, req.rec, got[0], got[1], rows,
                      got[2], got[3], np.zeros(0, np.int64), np.zeros((0, 2 * o_n), np.int32))
    np.testing.assert_array_equal(rows, got[1].sum(axis=1))
    np.testing.assert_array_equal(arrays[3][0, 0], g.astype(np.int64).sum(axis=0))
    assert got[3].max() > 1 << 32
    for a, b in zip(got, (arrays[0], arrays[1][0] > 26, arrays[2], arrays[3])):
        np.testing.assert_array_equal(a, b)


@functools.cache
def _fused_risk_kernel():
    """A loop over `kernels.fused_risk_task`'s tasks (compiled on first use), each given its
    block of the sums `g` (M, 2 * o_n) as two planes, as `int8_tiles._conv_risk_kernel` makes
    them."""
    import numba

    from npusim.sim import kernels as K

    @numba.njit
    def run(g, o_n, pixels, bias, pe_risk, lv, do_rq, rq, out, flags, rows, mnmx, sums, ms, gs):
        n, nb = mnmx.shape[0], mnmx.shape[1]
        for t in range(n * nb):
            b, blk, per, p_a, p_b = K.fused_task_pixels(t, nb, pixels)
            n_p = p_b - p_a
            gl = np.empty(max(2 * n_p * o_n, 1), np.int32)
            for r in range(n_p):
                for o in range(o_n):
                    gl[r * o_n + o] = np.int32(g[b * pixels + p_a + r, o])
                    gl[(n_p + r) * o_n + o] = np.int32(g[b * pixels + p_a + r, o_n + o])
            K.fused_risk_task(gl, ms, gs, o_n, pixels, bias, pe_risk, lv, do_rq, rq, out,
                              flags, rows, mnmx, sums, b, blk, p_a, p_b)

    return run


def _fused_risk_tasks(*args):
    _fused_risk_kernel()(*args)


def _check_epilogue(n, pixels, o_n, nch, case, bits, rounding, seed, small, bias, nb,
                    pe_bits=None):
    """One case of `test_epilogue_kernel_equals_a_walk_over_every_output` (`bias` per output,
    `nb` blocks per image; the pe level `pe_bits` wide, else `bits` like the acc level)."""
    pe_bits = bits if pe_bits is None else pe_bits
    from npusim.ir import arith
    from npusim.sim import kernels as K
    from npusim.sim.accumulate import Requant

    risk = case.startswith("risk")
    pe_risk = case == "risk_pe"
    wrap_bits = bits if case == "wrap" else 0
    signs = risk or case == "signs"
    q = 2 * o_n if signs else o_n
    rng = np.random.default_rng(seed)
    lim = (1 << (19 if small else 24)) - 1
    per = lim // nch
    m = n * pixels
    g = np.zeros((m, nch * q), np.float32)
    e = 18 if small else 22

    def draw_sums():  # powers of two: the bounds' edges, where a width changes
        return rng.choice([0, per, 1 << int(rng.integers(0, e)), (1 << int(rng.integers(0, e))) - 1,
                           rng.integers(0, per + 1)], size=(m, o_n))

    for c in range(nch):
        pos = draw_sums()
        if signs:  # output = pos - neg, both in [0, per]
            neg = draw_sums()
            g[:, c * q:c * q + o_n] = pos - neg
            g[:, c * q + o_n:(c + 1) * q] = pos
        else:
            g[:, c * q:(c + 1) * q] = pos * rng.choice([-1, 1], size=(m, o_n))
    bias = np.asarray(bias[:o_n], np.int64)
    lv = K.LevelSpec(K.OS, 16, pe_bits, K.MODE_CODES["wrap"], bits, K.MODE_CODES["wrap"])
    m0 = rng.integers(1 << 30, 1 << 31, o_n)
    sh = rng.integers(31, 45, o_n)  # no left shift: |acc * m0| < 2^63, as the simulator checks
    req = Requant.of(m0, sh, np.zeros(o_n, np.float32), False,
                     arith.rounding_code(rounding, "fixed"), 32, 3, -128, 127)
    do_rq = bool(np.abs(bias).max() < (1 << 31))  # larger: the 64-bit product is refused
    out = np.empty((m, o_n), np.int8 if do_rq else np.int64)  # the dtypes real layers use
    need = np.empty((2, m, o_n) if risk else (2, 1, 1), np.uint8)
    mnmx = np.empty((n, nb, 4), np.int64)
    sums = np.empty((n, nb, q * (2 if nch > 1 else 1)), np.int64)
    K.gemm_epilogue_kernel(g, o_n, pixels, bias, risk, pe_risk, lv, do_rq, req.rec, out,
                           need[0], need[1], mnmx, sums, wrap_bits, nch)
    if risk and nch == 1:  # the fused kernels' task on the same sums, as planes: identical,
        # its flags those the bound bits give at these widths
        got = [np.empty_like(a) for a in (out, need[0], mnmx, sums)]
        ms = rng.integers(0, m, 5)
        gs = np.zeros((len(ms), q), np.int32)
        rows = np.empty(m, np.int32)
        _fused_risk_tasks(g, o_n, pixels, bias, pe_risk, lv, do_rq, req.rec, got[0], got[1],
                          rows, got[2], got[3], ms, gs)
        flags = (need[0] > bits) | (pe_risk & (need[1] > pe_bits))
        for a, b in zip(got, (out, flags, mnmx, sums)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(rows, flags.sum(axis=1))
        np.testing.assert_array_equal(gs, g[ms])

    tot = g.astype(np.int64).reshape(m, nch, q).sum(axis=1)
    acc = tot[:, :o_n] + bias
    if wrap_bits:
        acc = np.vectorize(lambda v: naive.wrap(int(v), wrap_bits))(acc)
    if do_rq:
        want_out = naive.requantize(acc[:, :, None], m0, sh, rounding, 32, 3, -128, 127)[:, :, 0]
    else:
        want_out = acc
    np.testing.assert_array_equal(out, want_out)
    flagged = np.zeros((m, o_n), bool)
    if risk:
        pos, neg = tot[:, o_n:], tot[:, o_n:] - tot[:, :o_n]
        for i, o in np.ndindex(m, o_n):
            b = int(bias[o])
            na = arith.bits_needed(min(b - int(neg[i, o]), 0), max(b + int(pos[i, o]), 0))
            npe = arith.bits_needed(-int(neg[i, o]), int(pos[i, o]))
            assert (need[0][i, o], need[1][i, o]) == (na, npe)
            flagged[i, o] = na > bits or (pe_risk and npe > pe_bits)
    blk = -(-pixels // nb)
    for b, k in np.ndindex(n, nb):
        rows = np.arange(b * pixels + k * blk, b * pixels + min(pixels, (k + 1) * blk))
        a = acc[rows]
        keep = a[~flagged[rows]]
        want = [a.min(initial=2 ** 63 - 1), a.max(initial=-2 ** 63),
                keep.min(initial=2 ** 63 - 1), keep.max(initial=-2 ** 63)]
        assert list(mnmx[b, k]) == want
        col = g[rows].astype(np.int64).reshape(len(rows), nch, q)
        assert np.array_equal(sums[b, k, :q], col.sum(axis=(0, 1)))
        if nch > 1:
            wsum = (col * np.arange(1, nch + 1)[None, :, None]).sum(axis=(0, 1))
            assert np.array_equal(sums[b, k, q:], wsum)


@pytest.mark.parametrize("wrap_bits", [0, 32])
def test_epilogue_hands_inexact_float_products_to_the_integer_rule(wrap_bits):
    """An accumulator whose product with the multiplier passes 2^52, crafted so that the
    float64 product rounds onto a tie (``acc * m0 = k * 2^31 + 2^30 - 1``, exactly below
    half): the flat float64 path (`kernels._flat_epilogue_task`) must see it among its
    block's extremes and leave the block to the integer rule, beside small accumulators on
    either side and in runs of several pixels."""
    m0, sh = (1 << 31) - 1, 31
    acc = ((1 << 30) - 1) * pow(m0, -1, 1 << 31) % (1 << 31)  # acc * m0 = 2^30 - 1 mod 2^31
    assert float(acc) * m0 >= 2.0 ** 52 and (acc * m0) % (1 << 31) == (1 << 30) - 1
    g = np.random.default_rng(0).integers(-500, 500, (70, 2)).astype(np.float32)
    g[37, 0] = 1000.0
    bias = np.array([acc - 1000, 7], np.int64)  # sums stay small, as the engine's are
    out = _crafted_epilogue(g, bias, m0, sh, wrap_bits)
    assert out[37, 0] == acc * m0 >> sh  # the float product alone gives one more


def test_epilogue_hands_inexact_products_of_raw_sums_to_the_integer_rule():
    """A raw sum within the engine's 2^24 whose product with the multiplier passes 2^53 and
    rounds up onto the rounding edge (``acc * m0 = k * 2^31 + 2^30 - 1``), with a small bias:
    the fused rule's terms are exact, so only the block's extremes can send it to the integer
    rule, in the flat task and in the fused kernels' risk task (`_crafted_epilogue`)."""
    m0, sh, acc = 1090519041, 31, (1 << 24) - 1
    assert (acc * m0) % (1 << 31) == (1 << 30) - 1 and float(acc) * m0 >= 2.0 ** 53
    g = np.random.default_rng(0).integers(-500, 500, (70, 2)).astype(np.float32)
    g[37, 0] = acc - 7
    out = _crafted_epilogue(g, np.array([7, -3], np.int64), m0, sh, 0)
    assert out[37, 0] == (acc * m0 + (1 << 30)) >> sh


def test_epilogue_hands_biases_too_large_for_its_fused_rule_to_the_integer_rule():
    """A bias whose product with the multiplier passes 2^53, so that the flat task's folded
    term (``bias * km * 2^-31 + 1/2``, `arith.requant_fma_terms`) rounds, beside an
    accumulator (5) whose own product is small and lies just below a rounding edge
    (``5 * m0 = 2^30 - 1 mod 2^31``): the rounded term would give 5 instead of 4; the flat
    task must decline the block (``|bias * km| >= 2^52``) and leave it to the integer rule."""
    m0, sh, acc, b0 = 1932735283, 31, 5, 4660341
    assert (acc * m0) % (1 << 31) == (1 << 30) - 1 and b0 * m0 >= 1 << 53
    g = np.random.default_rng(0).integers(-500, 500, (70, 2)).astype(np.float32)
    g[:, 0] = acc - b0  # below 2^24: the engine's float32 sums hold it
    out = _crafted_epilogue(g, np.array([b0, 7], np.int64), m0, sh, 0)
    assert (out[:, 0] == 4).all()


def _crafted_epilogue(g, bias, m0, sh, wrap_bits):
    """`kernels.gemm_epilogue_kernel` on the sums `g` (pixels, columns) of one image and
    task, every column requantized by (m0, sh) half_up into 32-bit outputs, checked against
    Python integers, and without wrapping the fused kernels' risk task likewise; returns the
    outputs."""
    from npusim.ir import arith
    from npusim.sim import kernels as K
    from npusim.sim.accumulate import Requant

    pixels, o_n = g.shape
    req = Requant.of(np.full(o_n, m0), np.full(o_n, sh), np.zeros(o_n, np.float32), False,
                     arith.rounding_code("half_up", "fixed"), 32, 0, -(1 << 31), (1 << 31) - 1)
    assert req.rec.f64
    out = np.empty((pixels, o_n), np.int64)
    mnmx = np.empty((1, 1, 4), np.int64)
    sums = np.empty((1, 1, o_n), np.int64)
    lv = K.LevelSpec(K.OS, 16, 32, K.MODE_CODES["wrap"], 32, K.MODE_CODES["wrap"])
    no = np.empty((1, 1), np.uint8)
    K.gemm_epilogue_kernel(g, o_n, pixels, bias, False, False, lv, True, req.rec, out, no, no,
                           mnmx, sums, wrap_bits, 1)
    want = naive.requantize((g.astype(np.int64) + bias)[:, :, None], np.full(o_n, m0),
                            np.full(o_n, sh), "half_up", 32, 0, -(1 << 31), (1 << 31) - 1)
    np.testing.assert_array_equal(out, want[:, :, 0])
    if not wrap_bits:  # the fused kernels' risk task (sign columns, nothing flagged at 32 bits)
        fused = np.empty_like(out)
        gp = np.concatenate([g, np.maximum(g, 0)], axis=1)
        rows = np.full(pixels, -1, np.int32)
        _fused_risk_tasks(gp, o_n, pixels, bias, False, lv, True, req.rec, fused,
                          np.empty((pixels, o_n), np.uint8), rows, mnmx,
                          np.empty((1, 1, 2 * o_n), np.int64), np.zeros(0, np.int64),
                          np.zeros((0, 2 * o_n), np.int32))
        assert not rows.any()
        np.testing.assert_array_equal(fused, want[:, :, 0])
    return out


def test_layers_whose_bias_the_epilogue_cannot_hold_exactly_leave_the_engine():
    """The epilogue's float64 bound lanes are exact for |bias| < 2^52: the guard, with the
    int64 minimum (whose NumPy abs overflows) included."""
    from npusim.sim.accumulate import _bias_fits

    top = (1 << 52) - 1
    assert _bias_fits(np.array([top, -top, 0], np.int64))
    assert _bias_fits(np.zeros(0, np.int64))
    for bad in (1 << 52, -(1 << 52), np.iinfo(np.int64).min, np.iinfo(np.int64).max):
        assert not _bias_fits(np.array([0, bad], np.int64))
    from npusim.sim import kernels as K
    from npusim.sim.accumulate import prepare_conv

    engine = engines.Engine("int8", "int8", "exact")
    lv = K.LevelSpec(K.OS, 16, 32, K.EXACT, 32, K.EXACT)
    w = np.ones((2, 3, 3, 3), np.int64)
    args = (1, 1, 1, 0, (0, 255), lv, 20, 20)
    made = []  # the packings asked for (the stub packs nothing: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engines.Engine, "prepare_int8", lambda self, *a: made.append(a))
        assert prepare_conv(engine, w, np.array([0, 1 << 52], np.int64), *args) is None
        assert not made  # refused before any packing
        prepare_conv(engine, w, np.array([0, top], np.int64), *args)
        assert made


def test_an_empty_batch_gives_empty_outputs():
    """Zero images through the int8 engine, fused (one configuration) and shared (a sweep):
    empty outputs and zero statistics, not a failed reduction."""
    from npusim.sim.simulator import run_many

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(8, 3, 3, 3))
    prog = conv_program(w, rng.integers(-100, 100, size=8), (3, 6, 6), padding=1)
    x = np.zeros((0, 3, 6, 6), np.int64)
    cfg = NPUConfig.preset("edge16")
    narrow = cfg.with_overrides({"precision.acc_bits": 17, "precision.pe_acc_bits": 17})
    for res in [Simulator(cfg).run(prog, x), *run_many([Simulator(cfg), Simulator(narrow)],
                                                       prog, x)]:
        assert res.outputs["y"].shape == (0, 8, 6, 6)
        assert res.stats[["acc_min", "acc_max", "nonzero_macs"]].iloc[0].tolist() == [0, 0, 0]


def test_the_engine_label_names_the_kernel():
    """The CLI's engine label says which kernel computes the int8 engine's convs here."""
    assert engines.Engine("reference", "reference").label == "reference engine"
    assert engines.Engine("float", "float").label == "float engine"
    own = int8_tiles.available()
    assert engines.Engine("auto", "int8", "exact").label == \
        ({"vnni": "int8 engine, own AVX-512 VNNI kernel", "avx2": "int8 engine, own AVX2 kernel"}
         [int8_tiles.ISA] if own else "int8 engine, oneDNN")
