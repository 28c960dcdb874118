"""ONNX import: ONNX Runtime-quantized CNNs simulated by npusim against ONNX Runtime itself.

    python benchmarks/onnx_import.py            # ResNet-18, MobileNetV2, ShuffleNetV2 x0.5 and
                                                # x1.0 (224x224), ResNet-20
    python benchmarks/onnx_import.py --quick    # 4 images, no ResNet-20 training
    python benchmarks/onnx_import.py --models shufflenetv2_x0_5 shufflenetv2_x1_0
                                                # rerun these; keep the CSV's other rows

For each model and each of ONNX Runtime's two quantized formats (QDQ and QOperator; per-channel
int8 weights, uint8 activations, synthetic calibration): export the float model
(torch.onnx.export, TorchScript exporter), quantize it with onnxruntime.quantization
(`quantize_static`), import it (`npusim.onnx.import_onnx`), simulate N inputs on edge16 in the
program's float (ORT) requantization mode with 32-bit accumulators, and compare EVERY node's
output tensor with ONNX Runtime's on the same inputs. ResNet-18, MobileNetV2 and ShuffleNetV2
have random weights (only the arithmetic is compared); ResNet-20 is trained (float) on mnist5k and imported
with the `--pixels` LUT, so raw uint8 test images go in and top-1 is reported too. Writes
reports/onnx_import.md and reports/onnx_import.csv.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def export_float(model, shape, path: Path) -> Path:
    """The model without its InputNorm (the stem conv pads instead) as ONNX, dynamic batch."""
    import onnx
    import torch

    pad = model.input_norm.padding
    model.input_norm = torch.nn.Identity()
    model.stem.conv.padding = (pad, pad)
    torch.onnx.export(model.eval(), torch.zeros(1, *shape), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=13,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    keep = []
    for n in m.graph.node:  # torch shares equal constants through Identity nodes
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, str(path))
    return path


def quantize(float_path: Path, out: Path, calib: np.ndarray, fmt: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from npusim.sim.int8_engine import _cpu_has_exact_int8

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(float_path), str(out), Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=True, reduce_range=not _cpu_has_exact_int8(),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def compare(prog, qpath: Path, x_float: np.ndarray, x_int: np.ndarray) -> dict:
    """Simulate, run ORT with every node output exposed, count mismatching elements."""
    import onnx
    import onnxruntime as ort

    from npusim.hw.config import NPUConfig
    from npusim.sim.simulator import Simulator

    cfg = NPUConfig.load("edge16").with_overrides({
        "requant.scale_mode": "float", "requant.rounding": "half_even",
        "precision.acc_bits": 32, "precision.pe_acc_bits": 32})
    sim = Simulator(cfg)
    sim.run(prog, x_int[:1])  # compile / plan outside the timing
    names = [n.output for n in prog.nodes if n.op != "embed"]
    model = onnx.load(str(qpath))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(qpath), opts, providers=["CPUExecutionProvider"])
    plain.run(None, {"x": x_float[:1]})
    bad = total = final_bad = 0
    t_sim = t_ort = 0.0
    preds, ort_preds = [], []
    o = prog.tensors[prog.outputs[0]]
    for start in range(0, len(x_int), 8):  # in chunks: every tensor of 8 images at a time
        xi, xf = x_int[start:start + 8], x_float[start:start + 8]
        t0 = time.perf_counter()
        res = sim.run(prog, xi, trace=True)
        t_sim += time.perf_counter() - t0
        t0 = time.perf_counter()
        final = plain.run(None, {"x": xf})[0]
        t_ort += time.perf_counter() - t0
        outs = sess.run(names, {"x": xf})
        for name, ref in zip(names, outs):
            ours = res.traces[name]
            if ref.dtype == np.float32:
                t = prog.tensors[name]
                ours = (ours - t.zero_point).astype(np.float32) * np.float32(t.scale)
            bad += int((ours.reshape(ref.shape) != ref).sum())
            total += ref.size
        ours_final = (res.outputs[prog.outputs[0]] - o.zero_point).astype(np.float32) * \
            np.float32(o.scale)
        final_bad += int((ours_final.reshape(final.shape) != final).sum())
        preds.append(res.predictions)
        ort_preds.append(final.reshape(len(final), -1).argmax(1))
        macs = int(res.stats["macs_per_image"].sum())
    preds, ort_preds = np.concatenate(preds), np.concatenate(ort_preds)
    n = len(x_int)
    return {"mismatches_all_tensors": bad, "elements_compared": total,
            "final_mismatches": final_bad, "top1_agree": float(np.mean(preds == ort_preds)),
            "sim_s_per_image": t_sim / n, "ort_s_per_image_1thread": t_ort / n,
            "macs_per_image": macs, "predictions": preds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=2, help="ResNet-20 mnist5k float epochs")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "onnx_import.md")
    ap.add_argument("--models", nargs="+", default=None,
                    help="run only these models and keep the other rows of the existing CSV")
    ap.add_argument("--from-csv", action="store_true",
                    help="only re-render the markdown from the CSV of a previous run")
    args = ap.parse_args(argv)
    n_img = 4 if args.quick else args.images
    if args.from_csv:
        import torch

        return write_report(pd.read_csv(args.out.with_suffix(".csv")), args, torch)

    import onnx
    import torch

    from models.registry import create_model
    from npusim.onnx import import_onnx
    from npusim.onnx.importer import ort_quantize_linear

    rng = np.random.default_rng(0)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="onnx_import_"))
    cases = [("resnet18", 224, 1000), ("mobilenetv2", 224, 1000),
             ("shufflenetv2_x0_5", 224, 1000), ("shufflenetv2_x1_0", 224, 1000)]
    if not args.quick:
        cases.append(("resnet20", 28, 10))
    if args.models:
        unknown = sorted(set(args.models) - {c[0] for c in cases})
        if unknown:
            ap.error(f"--models: unknown {unknown}; known: {[c[0] for c in cases]}")
        cases = [c for c in cases if c[0] in args.models]
    for name, hw, classes in cases:
        torch.manual_seed(0)
        labels = pixels = raw = None
        if name == "resnet20":  # trained on mnist5k; raw test pixels through the LUT
            from models.cached import train_float
            from models.checkpoint import load_checkpoint
            from npusim.data import load_dataset

            ckpt, _ = train_float("resnet20", "mnist5k", args.epochs, progress=False)
            net, _ = load_checkpoint(ckpt)
            mean = net.input_norm.mean.numpy().astype(np.float32)
            std = net.input_norm.std.numpy().astype(np.float32)
            test = load_dataset("mnist5k", "test").subset(n_img)
            train = load_dataset("mnist5k", "train").subset(16)
            raw, labels = test.images.astype(np.uint8), test.labels
            x_float, calib = (((p.astype(np.float32) / np.float32(255) - mean[:, None, None])
                               / std[:, None, None]).astype(np.float32)
                              for p in (raw, train.images))
            pixels = (mean, std, 255.0)
            shape = raw.shape[1:]
        else:
            shape = (3, hw, hw)
            net = create_model(name, num_classes=classes, in_channels=3)
            x_float = rng.standard_normal((n_img, *shape)).astype(np.float32)
            calib = rng.standard_normal((4, *shape)).astype(np.float32)
        fpath = export_float(net, shape, work / f"{name}.onnx")
        for fmt in ("qdq", "qop"):
            qpath = quantize(fpath, work / f"{name}_{fmt}.onnx", calib, fmt)
            t0 = time.perf_counter()
            prog = import_onnx(qpath, pixels=pixels)
            t_imp = time.perf_counter() - t0
            if pixels is not None:
                x_int = raw
            else:
                spec = prog.tensors[prog.input]
                x_int = ort_quantize_linear(x_float, spec.scale, spec.zero_point, spec.signed)
            r = compare(prog, qpath, x_float, x_int)
            preds = r.pop("predictions")
            row = {"model": name, "input": "x".join(map(str, shape)), "format": fmt,
                   "onnx_nodes": len(onnx.load(str(qpath)).graph.node),
                   "program_nodes": len(prog.nodes), "images": n_img, "import_s": t_imp, **r}
            if labels is not None:
                row["top1_sim"] = float(np.mean(preds == labels))
            rows.append(row)
            print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)
    df = pd.DataFrame(rows)
    csv = args.out.with_suffix(".csv")
    if args.models and csv.exists():  # keep the rows of the models not rerun, in their order
        old = pd.read_csv(csv)
        old = old[~old["model"].isin(args.models)]
        df = pd.concat([old, df], ignore_index=True)
        order = [c for c in ("resnet18", "mobilenetv2", "shufflenetv2_x0_5", "shufflenetv2_x1_0",
                             "resnet20") if c in set(df["model"])]
        df = df.sort_values("model", key=lambda m: m.map(order.index), kind="stable")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out.with_suffix(".csv"), index=False)
    return write_report(df, args, torch)


def write_report(df: pd.DataFrame, args, torch) -> int:
    """Write the markdown report of a results table."""
    import onnxruntime

    from npusim.io import markdown_table
    from npusim.sim.int8_engine import _cpu_has_exact_int8

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rerun = ""
    if getattr(args, "models", None):
        import re

        prev = re.search(r"on\n(\d{4}-\d\d-\d\d) \(.*?load ([\d.]+)",
                         args.out.read_text() if args.out.exists() else "", re.S)
        rerun = (f"\nOnly {', '.join(args.models)} were run then; the other rows are kept from "
                 f"the CSV of the previous run"
                 + (f" ({prev.group(1)}, load {prev.group(2)})." if prev else "."))
    command = f" --models {' '.join(args.models)}" if getattr(args, "models", None) else ""
    weights = "" if _cpu_has_exact_int8() else ", 7-bit (reduce_range: this CPU has no VNNI)"
    text = f"""# ONNX import: npusim against ONNX Runtime

Generated by `python benchmarks/onnx_import.py{' --quick' if args.quick else ''}{command}` on
{datetime.date.today()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,
load {load:.1f}; onnxruntime {onnxruntime.__version__}, torch {torch.__version__}).{rerun}

Each model is exported from `models/` (`torch.onnx.export`, TorchScript exporter, opset 13),
quantized by ONNX Runtime's `quantize_static` (per-channel int8 weights{weights},
uint8 activations, synthetic calibration; QDQ and QOperator formats), imported with
`npusim.onnx.import_onnx` and simulated on edge16 in the program's `float` requantization mode
(ONNX Runtime's MLAS arithmetic) with 32-bit accumulators. `mismatches_all_tensors` counts the
elements of EVERY program node's output that differ from ONNX Runtime's tensor of the same name
on the same inputs (`elements_compared` in all). ResNet-18 / MobileNetV2 / ShuffleNetV2 have
random weights (arithmetic only; ShuffleNetV2's channel split, concat and shuffle import as
`slice`, `concat` and `channel_shuffle`); ResNet-20 is a float model trained {args.epochs} epochs on mnist5k, imported
with `--pixels` (an `embed` LUT from raw uint8 pixels), and `top1_sim` is its test accuracy on
the simulator (the first `images` test images; the export pads the normalised image in the stem
conv instead of the raw one, so borders differ slightly from the trained float model). Times: the simulator with its default threads; ONNX Runtime with one thread.

{markdown_table(df, floatfmt=".3g")}

What "equal" rests on (see `npusim/onnx/importer.py`):
- QLinearConv / QGemm / QLinearMatMul: ``f32(acc) * f32(f32(s_x*s_w)/s_y)``, clamp, round half
  to even, + zero point (the simulator's float mode, docs/architecture.md).
- QLinearAdd: MLAS's AVX2 kernel, ``rne(fma(a, r_a, fma(b, r_b, zp_y - fma(r_a, zp_a,
  r_b*zp_b))))`` in float32 with ``r = f32(s_in/s_y)``; the output zero point is inside the
  rounded value. npusim emulates the FMAs exactly (float64 products, sums rounded to odd). ORT's
  ARM NEON kernel uses fixed point when the scale ratios allow and differs; its SSE2-only
  kernel was not checked.
- QLinearGlobalAveragePool: integer sum times ``f32(s_x / f32(s_y * f32(H*W)))``.
- QLinearConcat (and a QDQ Concat, which ORT runs as DequantizeLinear -> Concat ->
  QuantizeLinear): each input ``rne(f32(f32(s_x * f32(x - zp_x)) / s_y)) + zp_y``, clamped
  (QlinearBuildLookupTable + MlasQuantizeLinear: a division, ties to even); Split / Slice /
  the Reshape-Transpose-Reshape shuffle move integers only.
- Not exact: QLinearAveragePool (and a QDQ AveragePool, which ORT runs in float) averages
  dequantized floats; the NPU's avgpool2d sums integers (tests: within 1, rare). The networks
  above have no AveragePool.
- On x86 CPUs without VNNI, ORT's u8s8 kernels saturate pairs of products to int16: the weights
  are quantized to 7 bits (reduce_range) there, as ORT documents.
"""
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
