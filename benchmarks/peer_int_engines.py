"""Public exact-integer engines against the private oneDNN op (issue 20's "a public, exact
integer engine" direction): are they exact on this CPU, and how fast against fbgemm?

    PYTHONPATH=. python benchmarks/peer_int_engines.py [--batch 8] [--repeats 3]

Per ResNet-18 (224x224) conv shape, timed back to back in one process, best of `--repeats`:
fbgemm's quantized conv (the production peer; it requantizes, so it is a timing reference
only), the simulator's int8 engine (`npusim.sim.int8_engine`, with its verification: its
own kernel, `npusim.sim.int8_tiles`, where the CPU has AVX-512 VNNI or AVX2, and the private
``torch.ops.onednn.qconv2d_pointwise``), ONNX Runtime's ``ConvInteger``
(NCHW, uint8 x int8, int32 out) and ``MatMulInteger`` on an im2col of the input (the im2col is
timed with it), and ``torch._int_mm`` (int8 x int8 -> int32; on the first shape only: it has
no fast CPU kernel here). Each engine's int32 sums are compared with an int64 reference on the
operands of the timing and on a saturation probe (every input 255, weights +-127/-128:
the pattern that breaks a ``vpmaddubsw`` pair, which sums two u8 x s8 products into int16).
The section it writes replaces the one of the same title in reports/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_simulator import best_of, cpu_flags, cpu_model, engine_line, fmt, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- peer_int_engines -->"
# (name, input channels, output channels, kernel, stride, input size): ResNet-18 at 224
SHAPES = (("layer1 3x3", 64, 64, 3, 1, 56), ("layer2 3x3", 128, 128, 3, 1, 28),
          ("layer3 3x3", 256, 256, 3, 1, 14), ("layer4 3x3", 512, 512, 3, 1, 7),
          ("layer3 down 1x1/2", 128, 256, 1, 2, 28))
ZP = 128  # activations as uint8 with zero point 128 (int8 values shifted)


def _session(graph_node, w: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(ZP, np.uint8), "zp")]
    g = helper.make_graph([graph_node], "g",
                          [helper.make_tensor_value_info("X", TensorProto.UINT8, None)],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_conv(w: np.ndarray, k: int, stride: int, threads: int):
    """x (N, C, H, W) uint8 -> ConvInteger int32 (N, O, Ho, Wo)."""
    from onnx import helper

    pad = k // 2
    s = _session(helper.make_node("ConvInteger", ["X", "W", "zp"], ["Y"], pads=[pad] * 4,
                                  strides=[stride] * 2), w, threads)
    return lambda x: s.run(None, {"X": x})[0]


def im2col(xh: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Channels-last uint8 (N, H, W, C) -> (N*Ho*Wo, k*k*C), padded with the zero point."""
    pad = k // 2
    if pad:
        xh = np.pad(xh, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=ZP)
    win = np.lib.stride_tricks.sliding_window_view(xh, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(
        -1, k * k * xh.shape[3])


def ort_matmul(w: np.ndarray, k: int, stride: int, threads: int):
    """x (N, H, W, C) uint8 -> im2col -> MatMulInteger int32 (N*Ho*Wo, O)."""
    from onnx import helper

    wm = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))
    s = _session(helper.make_node("MatMulInteger", ["X", "W", "zp"], ["Y"]), wm, threads)
    return lambda xh: s.run(None, {"X": im2col(xh, k, stride)})[0]


def reference(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """int64 conv of NCHW uint8 x (zero point ZP) with int8 w: (N, O, Ho, Wo)."""
    from npusim.sim.exact_conv import exact_conv2d

    return exact_conv2d(x.astype(np.int64) - ZP, w.astype(np.int64), stride, w.shape[2] // 2)


def engines(w: np.ndarray, k: int, stride: int, hw: int, threads: int, first: bool) -> dict:
    """name -> (prepare, run, to_ref): `prepare` turns NCHW uint8 x into the engine's input
    (outside the timing, as a simulator keeps activations in its own layout), `run` is timed,
    `to_ref` turns its result into NCHW int64 sums for the exactness check. An engine that
    cannot take these operands (the int8 engine's 2^24 bound) is left out."""
    import torch

    from npusim.sim import engines as E
    from npusim.sim import int8_engine, int8_tiles
    from npusim.sim.int8_engine import int8_conv, prepare_int8_conv

    ho = (hw + 2 * (k // 2) - k) // stride + 1
    n_hwc = lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # noqa: E731
    rows_to_nchw = lambda y, n: y.reshape(n, ho, ho, -1).transpose(0, 3, 1, 2).astype(np.int64)  # noqa: E731
    out: dict = {}
    kind = E.select("auto").int8_kind
    # the engine's own kernel where the CPU has it, and oneDNN (the engine's other path)
    choices = [(f"own {int8_tiles.ISA_NAMES[int8_tiles.ISA]} kernel", True), ("oneDNN", False)] \
        if int8_tiles.available() else [("oneDNN", False)]
    available = int8_tiles.available
    for label, own in choices if kind else []:
        int8_tiles.available = lambda own=own: own  # `int8_engine._pack` chooses by it
        try:  # oneDNN on AVX2 without VNNI needs the weight split ("pairs")
            plan = prepare_int8_conv(w, stride, k // 2, 1, ZP, 0, 255,
                                     kind=int8_engine._cpu_int8_kind())
        finally:
            int8_tiles.available = available
        if plan is None:
            continue

        def npusim_int8(xh, plan=plan):
            r = int8_conv(xh, plan, (ho, ho))
            r.verify(r.g.reshape(len(xh), -1, r.g.shape[1]).sum(axis=1, dtype=np.float64)
                     .astype(np.int64))
            return r.g
        out[f"npusim int8 ({label}, verified)"] = (n_hwc, npusim_int8,
                                                   lambda y, x: rows_to_nchw(y, len(x)))
    conv = ort_conv(w, k, stride, threads)
    out["ORT ConvInteger"] = (lambda x: x, conv, lambda y, x: y.astype(np.int64))
    mm = ort_matmul(w, k, stride, threads)
    out["ORT MatMulInteger + im2col"] = (n_hwc, mm, lambda y, x: rows_to_nchw(y, len(x)))
    if first:
        wm = torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])))

        def int_mm(xh):
            cols = im2col(xh, k, stride).astype(np.int16) - ZP
            return torch._int_mm(torch.from_numpy(cols.astype(np.int8)), wm).numpy()
        out["torch._int_mm + im2col"] = (n_hwc, int_mm, lambda y, x: rows_to_nchw(y, len(x)))
    return out


def fbgemm(w: np.ndarray, k: int, stride: int, x: np.ndarray):
    """fbgemm's quantized conv of x (quantized to quint8 channels-last once, outside the
    timing) with requantized uint8 output: a function of no arguments."""
    import torch

    torch.backends.quantized.engine = "fbgemm"
    conv = torch.ao.nn.quantized.Conv2d(w.shape[1], w.shape[0], k, stride=stride, padding=k // 2)
    conv.set_weight_bias(torch.quantize_per_tensor(torch.from_numpy(w.astype(np.float32)), 1.0,
                                                   0, torch.qint8), None)
    conv.scale, conv.zero_point = 1000.0, 0
    xq = torch.quantize_per_tensor(torch.from_numpy(x.astype(np.float32)), 1.0, ZP,
                                   torch.quint8).contiguous(memory_format=torch.channels_last)
    return lambda: conv(xq)


def exact(eng, x: np.ndarray, ref: np.ndarray) -> str:
    """"yes"/"NO" for the engine's sums of x against `ref`; "refused" when the engine's own
    check raised (the simulator then recomputes the layer with the float engine),
    "n/a (bound)" when the engine cannot prove these operands' sums below 2^24."""
    if eng is None:
        return "n/a (bound)"
    prepare, run, to_ref = eng
    try:
        return "yes" if np.array_equal(to_ref(run(prepare(x)), x), ref) else "NO"
    except ArithmeticError:
        return "refused"


def measure(batch: int, repeats: int, threads: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i, (name, cin, cout, k, stride, hw) in enumerate(SHAPES):
        # trained-like weights: Gaussian, each output channel scaled to max |w| = 127
        wf = rng.standard_normal((cout, cin, k, k))
        w = np.round(127 * wf / np.abs(wf).reshape(cout, -1).max(axis=1)[:, None, None, None]
                     ).astype(np.int8)
        x = rng.integers(0, 256, (batch, cin, hw, hw), dtype=np.uint8)
        # saturation probe: every input 255 (x - zp = 127), weights 127 and -128 by channel
        wp = np.full_like(w, 127)
        wp[:, 1::2] = -128
        xp = np.full((1, cin, hw, hw), 255, np.uint8)
        ref, ref_p = reference(x, w, stride), reference(xp, wp, stride)
        t_peer = best_of(fbgemm(w, k, stride, x), repeats)
        macs = ref.size * cin * k * k
        rows.append({"shape": name, "engine": "fbgemm (peer, requantizes)", "ms": 1e3 * t_peer,
                     "x_fbgemm": 1.0, "gmac_per_s": macs / t_peer / 1e9,
                     "exact_random": "n/a", "exact_probe": "n/a"})
        probes = engines(wp, k, stride, hw, threads, i == 0)
        for eng, e in engines(w, k, stride, hw, threads, i == 0).items():
            ok, ok_p = exact(e, x, ref), exact(probes.get(eng), xp, ref_p)
            xe = e[0](x)
            t = best_of(lambda: e[1](xe), 1 if eng.startswith("torch") else repeats)
            rows.append({"shape": name, "engine": eng, "ms": 1e3 * t, "x_fbgemm": t / t_peer,
                         "gmac_per_s": macs / t / 1e9, "exact_random": ok, "exact_probe": ok_p})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "reports" / "BENCHMARKS.md"))
    args = ap.parse_args()
    import numba
    import onnxruntime
    import torch

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    started = datetime.datetime.now().isoformat(timespec="minutes")
    df = measure(args.batch, args.repeats, threads)
    load = os.getloadavg()[0]
    md = f"""{MARK}
## Public exact integer engines vs the private oneDNN op (issue 20)

Command: `PYTHONPATH=. python benchmarks/peer_int_engines.py --batch {args.batch} --repeats
{args.repeats}`; started {started}; load average {load:.1f} at the end.
Machine: {os.cpu_count()} cores, {cpu_model()}; CPU flags: {cpu_flags()}; torch
{torch.__version__}, onnxruntime {onnxruntime.__version__}, {threads} threads each.
Simulator engine: {engine_line()}.
ResNet-18 (224x224) conv shapes, batch {args.batch}, random uint8 activations (zero point
{ZP}) x Gaussian int8 weights (max |w| = 127 per output channel); inputs are put in each
engine's layout outside the timing; `x_fbgemm` = time / fbgemm's time in the same run (best of
{args.repeats}). `exact_random`: int32 sums equal an int64 reference on the timed operands;
`exact_probe`: on the saturation probe (inputs 255, weights 127/-128).

{fmt(df)}
"""
    write_section(Path(args.out), MARK, md)
    print(fmt(df))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
