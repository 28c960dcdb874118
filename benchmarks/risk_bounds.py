"""How tight a cheaper overflow-risk bound would be (issue 20: wrap with events on AVX2).

    python benchmarks/risk_bounds.py            # ResNet-20 W8A8, batch 64, 16-bit wrap (os)

The study that sized the engine's pooled bound (round 17: `int8_engine._pooled_bound`, G = 2).
A layer at risk needs, besides the exact sums S, each output's positive product sum
P = sum(max(w, 0) * (x - zp)) (twice the columns: `int8_tiles.conv_risk`), which flag
the outputs whose running sum can leave the accumulator (``P > tp or P - S > tn``,
`kernels.risk_thresholds`). A pixel-group bound replaces P by Pg >= P shared by a G x G block
of output pixels: the conv of max(w, 0) over the input max-pooled across the G x G patches
(a dilated G x G max pool, then a conv at stride G * s): 1/G^2 of the pixels. This study
counts, per at-risk layer, the outputs each bound flags (an output flagged by Pg but not by P
would need the exact P after all) and times the tiles: the exact conv (O columns), the
two-plane risk conv (2 O) and the pooled conv of max(w, 0) (O columns, 1/G^2 pixels; the
pooling itself in NumPy, timed apart). Writes reports/risk_bounds.csv and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_simulator as P  # noqa: E402

from npusim.sim import int8_tiles as T  # noqa: E402
from npusim.sim import kernels as K  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def best_ms(fn, repeats: int) -> float:
    return P.best_of(fn, repeats) * 1e3


def capture(program, images) -> list[tuple]:
    """The arguments of every two-plane risk conv of one 16-bit wrap run."""
    cap, orig = [], T.conv_risk

    def spy(xu, zp, packed, stride, padding, o_n, bias, lv, do_rq, rq, out, mnmx, sums, ms,
            pe_risk, flags, bound=None, g=0):
        r = orig(xu, zp, packed, stride, padding, o_n, bias, lv, do_rq, rq, out, mnmx, sums, ms,
                 pe_risk, flags, bound, g)
        cap.append((xu.copy(), zp, packed, stride, padding, o_n, bias.copy(), lv, pe_risk,
                    flags.copy()))
        return r

    T.conv_risk = spy
    try:
        P.simulator_for("wrap", P.configs()["wrap"]).run(program, images)
    finally:
        T.conv_risk = orig
    return cap


def pooled(xu: np.ndarray, zp: int, g: int, s: int, p: int) -> np.ndarray:
    """The input padded at `zp` and max-pooled over `g` x `g` positions `s` apart: the conv
    of the result at stride g * s, no padding, reads for each block of g x g output pixels
    the elementwise max of their patches."""
    hp, wp = xu.shape[1] + 2 * p, xu.shape[2] + 2 * p
    e = (g - 1) * s
    xp = np.pad(xu, ((0, 0), (p, p + e), (p, p + e), (0, 0)), constant_values=zp)
    m = xp[:, :hp, :wp].copy()
    for dy in range(g):
        for dx in range(g):
            np.maximum(m, xp[:, dy * s:dy * s + hp, dx * s:dx * s + wp], out=m)
    return m


def study(cap, groups: list[int], repeats: int) -> pd.DataFrame:
    """One row per captured layer: outputs flagged by the exact and the pooled bounds, and
    the tiles' best times."""
    rows = []
    for i, (xu, zp, packed, s, p, o, bias, lv, pe_risk, flags) in enumerate(cap):
        g2 = T.conv(xu, zp, packed, s, p, np.int32).astype(np.int64)
        S, Pp = g2[..., :o], g2[..., o:]
        th = np.array([K.risk_thresholds(b, lv.acc_bits, lv.pe_bits, pe_risk) for b in bias],
                      np.int64)
        tp, tn = th[:, 0], th[:, 1]
        exact = (Pp > tp) | (Pp - S > tn)
        assert np.array_equal(exact.reshape(-1, o), flags != 0), "flags differ from the kernel's"
        ho, wo = S.shape[1:3]
        w = _unpacked(packed, xu.shape[3])
        sum_packed, pos_packed = T.pack(w[:o].astype(np.int8)), T.pack(w[o:].astype(np.int8))
        row = {"layer": i, "channels_in": xu.shape[3], "channels_out": o, "out_hw": ho,
               "stride": s, "outputs": exact.size, "flagged_exact": int(exact.sum()),
               "exact_tile_ms": best_ms(lambda: T.conv(xu, zp, sum_packed, s, p, np.int32),
                                        repeats),
               "two_plane_tile_ms": best_ms(lambda: T.conv(xu, zp, packed, s, p, np.int32),
                                            repeats)}
        for g in groups:
            m = pooled(xu, zp, g, s, p)
            gb = T.conv(m, zp, pos_packed, s * g, 0, np.int32).astype(np.int64)
            pg = np.repeat(np.repeat(gb, g, axis=1), g, axis=2)[:, :ho, :wo]
            assert (pg >= Pp).all(), "the pooled bound is below a positive sum"
            fg = (pg > tp) | (pg - S > tn)
            row[f"flagged_g{g}"] = int(fg.sum())
            # output pixels with any channel flagged: where a per-pixel fallback to the
            # exact positive sums would run
            row[f"pixels_any_g{g}_pct"] = 100 * float(fg.any(axis=3).mean())
            row[f"pool_g{g}_numpy_ms"] = best_ms(lambda: pooled(xu, zp, g, s, p), repeats)
            row[f"pooled_tile_g{g}_ms"] = best_ms(
                lambda: T.conv(m, zp, pos_packed, s * g, 0, np.int32), repeats)
        rows.append(row)
    return pd.DataFrame(rows)


def _unpacked(packed: T.TileWeights, c: int) -> np.ndarray:
    """The (q, C, kh, kw) weights of `packed` (groups == 1), read back through its convs of
    one-hot inputs: output column j of input e_k is w[j, k]."""
    kh, kw = packed.kh, packed.kw
    w = np.zeros((packed.q, c, kh, kw), np.int64)
    for ci in range(c):
        x = np.zeros((1, kh, kw, c), np.uint8)
        for ky in range(kh):
            for kx in range(kw):
                x[:] = 0
                x[0, ky, kx, ci] = 1
                w[:, ci, ky, kx] = T.conv(x, 0, packed, 1, 0, np.int32)[0, 0, 0, :packed.q]
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--groups", default="2,3,4")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if not T.available():
        sys.exit("risk_bounds: needs the engine's own tiles (AVX2 or AVX-512 VNNI, numba "
                 "compiling for the host); this host has neither")
    from npusim.data import load_dataset

    program = P.load_program(8)
    images = load_dataset("mnist5k", "test").subset(args.batch).images
    load0 = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    df = study(capture(program, images), [int(g) for g in args.groups.split(",")],
               args.repeats)
    load1 = os.getloadavg()
    print(df.to_string(index=False))
    out = ROOT / "reports" / "risk_bounds.csv"
    P.write_atomic(out, df.to_csv(index=False))
    tot = df.sum(numeric_only=True)
    gs = [int(g) for g in args.groups.split(",")]
    md = (f"# Cheaper overflow-risk bounds: how many outputs they flag (issue 20)\n\n"
          f"Command: `python benchmarks/risk_bounds.py --batch {args.batch} --groups "
          f"{args.groups} --repeats {args.repeats}`; started {started}.\n"
          f"Machine: {os.cpu_count()} cores, {P.cpu_model()}; CPU flags: {P.cpu_flags()}; "
          f"load {load0[0]:.2f} -> {load1[0]:.2f}. Tiles: best of {args.repeats}, "
          f"{P.engine_line()}\n\n"
          "ResNet-20 W8A8 (the perf_simulator program), 16-bit wrap (os): every layer that "
          "runs the two-plane risk conv. `flagged_exact`: outputs the exact positive sums "
          "flag (what the simulator walks); `flagged_gG`: outputs the G x G pixel-group "
          "bound flags, and `pixels_any_gG_pct` the share of output pixels with one flagged "
          "channel or more (where a fallback to the exact positive sums would run). Tiles in "
          "ms: `exact_tile` (O columns), `two_plane_tile` (2 O: "
          "today's risk conv), `pooled_tile_gG` (O columns of max(w, 0) on the pooled "
          "input); `pool_gG_numpy`: the pooling in NumPy.\n\n"
          + P.fmt(df) + "\n\n"
          f"Totals: {int(tot['outputs'])} outputs, {int(tot['flagged_exact'])} flagged "
          "exactly; " + ", ".join(f"G={g}: {int(tot[f'flagged_g{g}'])}" for g in gs)
          + f". Tiles: exact {tot['exact_tile_ms']:.1f} ms, two planes "
          f"{tot['two_plane_tile_ms']:.1f} ms, "
          + ", ".join(f"pooled G={g} {tot[f'pooled_tile_g{g}_ms']:.1f} ms" for g in gs)
          + ".\n")
    P.write_atomic(ROOT / "reports" / "risk_bounds.md", md)
    print(md)


if __name__ == "__main__":
    main()
