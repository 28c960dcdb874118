"""Simulator performance (issue 9): the bit-accurate simulator against PyTorch's fbgemm int8
kernels and a NumPy int64 reference, measured in one run on the same machine.

    python benchmarks/perf_simulator.py --quick    # a few minutes: fewer repeats and images
    python benchmarks/perf_simulator.py            # the full run (1,000-image sweep)
    python benchmarks/perf_simulator.py --narrow   # ResNet-18 224x224 at narrow accumulators

Measures: per-layer and whole-network GMAC/s of `exact`, `wrap` and `saturate` (ws, 16x16)
at batch 1 and 64 for ResNet-20 W8A8 (LSQ, mnist5k, 28x28); the same layers through
fbgemm's quantized conv and an int64 im2col + matmul in NumPy; a 24-point accumulator sweep
(12 widths x wrap/saturate) relative to one simulation; an LSQ QAT epoch relative to a float
epoch; peak RSS of a 1,000-image simulation and whether a fresh process recompiles cached
kernels (both in subprocesses). Prints a table and writes reports/BENCHMARKS.md (atomically).
The machine is shared: each ratio compares two timings taken in the same run (best of
`repeats`), and the load average is recorded.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("NPUSIM_CACHE", "/tmp/npc")

ROOT = Path(__file__).resolve().parent.parent
NARROW = 16  # wrap/saturate width for the throughput rows (ResNet-20 W8A8 needs ~20 bits)


def best_of(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up (noisy shared machine)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def engine_line() -> str:
    """Which exact conv engine "auto" gets on this CPU (`npusim.sim.engines`)."""
    from npusim.sim import engines

    eng = engines.select("auto")
    if eng.int8_kind is None:
        return "float engine only (no usable int8 engine on this CPU)"
    if eng.int8_kind == "exact":
        from npusim.sim import int8_tiles

        if int8_tiles.ISA == "vnni":
            return ("the engine's own AVX-512 VNNI conv (npusim.sim.int8_tiles, exact int32 "
                    "accumulation; depthwise convs by the engine's int32 kernel)")
        if int8_tiles.ISA == "avx2":
            return ("the engine's own AVX2 conv (npusim.sim.int8_tiles: vpmaddwd on int16 "
                    "inputs and weights, exact int32 accumulation; depthwise convs by the "
                    "engine's int32 kernel); fbgemm here runs the saturating vpmaddubsw "
                    "path, so it is a timing peer, not an exact result")
        return "oneDNN int8 with VNNI/AMX (exact int32 accumulation)"
    return ("oneDNN int8 on AVX2 without VNNI: weights split as 64*hi+lo wherever a pair of "
            "u8 x s8 products could saturate int16 (2x conv columns for 8-bit weights), "
            "strided 1x1 convs at stride 1 on the subsampled input, depthwise convs by the "
            "engine's own int32 kernel; fbgemm here runs the same "
            "saturating vpmaddubsw path, so it is a timing peer, not an exact result")


def load_program(bits: int = 8):
    from quantize import QuantConfig, build_program
    from quantize.cached import train_qat

    qmodel, _ = train_qat("resnet20", "mnist5k",
                          QuantConfig(method="lsq", weight_bits=bits, act_bits=bits), epochs=3)
    return build_program(qmodel)


def configs():
    from npusim.hw.config import NPUConfig

    base = NPUConfig.preset("edge16")
    narrow = {"precision.acc_bits": NARROW, "precision.pe_acc_bits": NARROW}
    wrap = base.with_overrides({**narrow, "precision.overflow": "wrap"})
    return {
        "exact": base,
        "wrap": wrap,
        "saturate": base.with_overrides({**narrow, "precision.overflow": "saturate",
                                         "array.dataflow": "ws", "array.rows": 16,
                                         "array.cols": 16}),
        "wrap_no_events": wrap,  # `Simulator(count_events=False)`: see `simulator_for`
    }


def simulator_for(mode: str, cfg):
    """The simulator of a row: `wrap_no_events` is `wrap` without overflow event counts
    (values exact, by the modular shortcut; the CLI's ``--no-count-events``)."""
    from npusim.sim.simulator import Simulator

    return Simulator(cfg, count_events=mode != "wrap_no_events")


def paired_best(fn, peer, repeats: int) -> tuple[float, float]:
    """Best wall times of `fn` and `peer`, timed alternately (`repeats` pairs after one
    warm-up each), so that a change of machine load between them moves both."""
    fn()
    peer()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, f in enumerate((fn, peer)):
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]


# ----------------------------------------------------------------------------- fbgemm peer
class FbgemmNet:
    """The program's graph through torch's quantized ops (fbgemm engine): quint8 activations
    (signed tensors as quint8 with zero point 128), per-channel qint8 weights, the program's
    scales. Only for timing: its rounding is fbgemm's, not the NPU's."""

    def __init__(self, program) -> None:
        import torch
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        torch.backends.quantized.engine = "fbgemm"
        self.torch = torch
        self.program = program
        self.mods = {}
        t = program.tensors
        for node in program.nodes:
            if node.op not in ("conv2d", "linear"):
                continue
            w = program.arrays[f"{node.name}.weight"].astype(np.float32)
            sw = np.broadcast_to(np.asarray(t[f"{node.name}.weight"].scale, np.float64),
                                 (w.shape[0],)).copy()
            qw = torch.quantize_per_channel(torch.from_numpy(w * sw.reshape(-1, *[1] * (w.ndim - 1))
                                                             .astype(np.float32)),
                                            torch.from_numpy(sw), torch.zeros(len(sw), dtype=torch.long),
                                            0, torch.qint8)
            out = t[node.output]
            relu = node.attrs.get("clamp", [None])[0] == out.zero_point and not out.signed
            if node.op == "conv2d":
                a = node.attrs
                cls = nniq.ConvReLU2d if relu else nnq.Conv2d
                m = cls(w.shape[1] * a["groups"], w.shape[0], w.shape[2], stride=a["stride"],
                        padding=a["padding"], groups=a["groups"])
            else:
                m = nnq.Linear(w.shape[1], w.shape[0])
            m.set_weight_bias(qw, None)
            m.scale, m.zero_point = self._qparams(out)
            self.mods[node.name] = m

    @staticmethod
    def _qparams(spec):
        s = float(np.asarray(spec.scale).reshape(-1)[0]) if spec.bits <= 8 else 1.0
        return s, (128 if spec.signed else spec.zero_point) if spec.bits <= 8 else 0

    def quantize_input(self, images: np.ndarray):
        torch = self.torch
        spec = self.program.tensors[self.program.input]
        x = torch.from_numpy(images.astype(np.float32) * float(spec.scale))
        return torch.quantize_per_tensor(x, float(spec.scale), 0, torch.quint8)

    def run(self, qx, times: dict | None = None):
        torch = self.torch
        vals = {self.program.input: qx}
        for node in self.program.nodes:
            t0 = time.perf_counter()
            x = vals[node.inputs[0]]
            if node.op in ("conv2d", "linear"):
                y = self.mods[node.name](x)
            elif node.op == "add":
                s, zp = self._qparams(self.program.tensors[node.output])
                b = vals[node.inputs[1]]
                relu = node.attrs.get("clamp", [None])[0] == 0
                y = (torch.ops.quantized.add_relu if relu else torch.ops.quantized.add)(x, b, s, zp)
            elif node.op == "maxpool2d":
                a = node.attrs
                y = torch.nn.functional.max_pool2d(x, a["kernel"], a["stride"], a["padding"])
            elif node.op == "global_avgpool":
                y = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            elif node.op == "flatten":
                y = x.reshape(x.shape[0], -1)
            else:
                raise NotImplementedError(node.op)
            vals[node.output] = y
            if times is not None:
                times[node.name] = times.get(node.name, 0.0) + time.perf_counter() - t0
        return vals


# ----------------------------------------------------------------------------- NumPy peer
def numpy_conv_int64(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The plain reference: int64 im2col + int64 matmul (no BLAS)."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    o, c, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    n, _, ho, wo = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
    return (cols @ w.reshape(o, -1).astype(np.int64).T).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------- parts
def throughput(program, images, repeats, rows, layer_rows):
    from npusim.sim.simulator import Simulator

    macs = {n.name: 0 for n in program.nodes}
    fb = FbgemmNet(program)
    for batch in (1, 64):
        x = images[:batch]
        qx = fb.quantize_input(x)
        sims = {}
        for mode, cfg in configs().items():
            sim = simulator_for(mode, cfg)
            # each mode's ratio against fbgemm timed alternately with it (best of each; a
            # batch-1 run takes milliseconds, so five times the pairs there: fbgemm's time is
            # the best over every mode's pairs, the simulator's over its own)
            secs, fb_secs = paired_best(lambda: sim.run(program, x), lambda: fb.run(qx),
                                        repeats * (5 if batch == 1 else 1))
            res = sim.run(program, x)
            for name, m in zip(res.stats["layer"], res.stats["macs_per_image"]):
                macs[name] = int(m)
            sims[mode] = (secs, dict(sim.node_seconds),
                          int(res.stats["sequential_outputs"].fillna(0).sum()), fb_secs)
        total_macs = batch * sum(macs.values())
        t_fb = min(v[3] for v in sims.values())
        fb_layers: dict = {}
        for _ in range(max(repeats, 1)):
            fb.run(qx, fb_layers)
        fb_layers = {k: v / max(repeats, 1) for k, v in fb_layers.items()}
        # NumPy reference: conv/linear layers on the simulator's own traced inputs
        trace = Simulator(configs()["exact"]).run(program, x, trace=True).traces
        trace[program.input] = x.astype(np.int64)
        np_layers = {}
        for node in program.nodes:
            if node.op not in ("conv2d", "linear"):
                continue
            w = program.arrays[f"{node.name}.weight"].astype(np.int64)
            xin = trace[node.inputs[0]] - program.tensors[node.inputs[0]].zero_point
            if node.op == "linear":
                xin, w, st, pd_ = xin.reshape(len(xin), -1, 1, 1), w.reshape(*w.shape, 1, 1), 1, 0
            else:
                st, pd_ = node.attrs["stride"], node.attrs["padding"]
            np_layers[node.name] = best_of(lambda: numpy_conv_int64(xin, w, st, pd_),
                                           max(1, repeats // 3))
        t_np = sum(np_layers.values())
        row = {"batch": batch, "macs": total_macs, "fbgemm_s": t_fb,
               "fbgemm_gmacs": total_macs / t_fb / 1e9, "numpy_int64_convs_s": t_np,
               "numpy_int64_gmacs": total_macs / t_np / 1e9}
        for mode, (secs, per, seq, fb_secs) in sims.items():
            row[f"{mode}_s"] = secs
            row[f"{mode}_gmacs"] = total_macs / secs / 1e9
            row[f"{mode}_vs_fbgemm"] = secs / fb_secs
            row[f"{mode}_speedup_vs_numpy"] = t_np / secs
            row[f"{mode}_sequential_outputs"] = seq
        rows.append(row)
        for node in program.nodes:
            if node.op not in ("conv2d", "linear"):
                continue
            lm = batch * macs[node.name]
            lr = {"batch": batch, "layer": node.name, "macs": lm,
                  "fbgemm_gmacs": lm / fb_layers[node.name] / 1e9,
                  "numpy_int64_gmacs": lm / np_layers[node.name] / 1e9}
            for mode, (_, per, _, _) in sims.items():
                lr[f"{mode}_gmacs"] = lm / per[node.name] / 1e9
                lr[f"{mode}_vs_fbgemm"] = per[node.name] / fb_layers[node.name]
            layer_rows.append(lr)


def sweep_cost(program, images, repeats):
    """24 configurations (12 widths x wrap/saturate, os) over `images` through `run_many`
    (GEMMs shared while inputs are identical) vs one exact simulation; two points are checked
    against separate runs, value for value and stat for stat."""
    from npusim.hw.config import NPUConfig
    from npusim.sim.simulator import Simulator, run_many

    base = NPUConfig.preset("edge16")
    one = best_of(lambda: Simulator(base).run(program, images), max(1, repeats // 3))
    widths = list(range(17, 29))  # W8A8: 17 bits hold one product; ~20 bits hold every sum
    cfgs = [base.with_overrides({"precision.acc_bits": b, "precision.pe_acc_bits": b,
                                 "precision.overflow": m})
            for m in ("wrap", "saturate") for b in widths]
    # compiled first, as every timed mode is (a kernel file's edit empties the numba cache:
    # the sweep, timed once, had paid ~50 s of compilation; fresh processes are timed below)
    run_many([Simulator(c) for c in cfgs], program, images[:16])
    t0 = time.perf_counter()
    results = run_many([Simulator(c) for c in cfgs], program, images)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in (0, len(cfgs) - 1):
        sep = Simulator(cfgs[i]).run(program, images)
        assert np.array_equal(sep.logits, results[i].logits) and sep.stats.equals(results[i].stats)
    two_separate = time.perf_counter() - t0
    events = sum(int(r.stats[["pe_overflows", "acc_overflows"]].fillna(0).to_numpy().sum())
                 for r in results)
    return {"images": len(images), "points": len(cfgs), "one_simulation_s": one,
            "sweep_s": total, "sweep_vs_one": total / one,
            "separate_runs_estimate_vs_one": 12 * two_separate / one,
            "overflow_events": events}


def qat_epoch(n_train: int, repeats: int = 3):
    """One epoch on the first `n_train` training images: LSQ W8A8 QAT vs float training, best
    of `repeats` epochs each, interleaved (float, QAT, float, ...) so both see the same load."""
    import torch

    from models import create_model
    from models.training import train
    from npusim.data import load_dataset
    from quantize import QuantConfig
    from quantize.qat import prepare_qat, qat_train

    torch.manual_seed(0)
    data = load_dataset("mnist5k", "train").subset(n_train)
    net = create_model("resnet20", in_channels=1, num_classes=10)
    train(net, data, 1, progress=False)  # warm-up (allocator, threads)
    qmodel = prepare_qat(copy.deepcopy(net), QuantConfig(method="lsq", weight_bits=8,
                                                         act_bits=8), data)
    qat_train(qmodel, data, 1, progress=False)
    t_float = t_qat = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        train(net, data, 1, progress=False)
        t_float = min(t_float, time.perf_counter() - t0)
        t0 = time.perf_counter()
        qat_train(qmodel, data, 1, progress=False)
        t_qat = min(t_qat, time.perf_counter() - t0)
    return {"train_images": n_train, "float_epoch_s": t_float, "lsq_qat_epoch_s": t_qat,
            "qat_vs_float": t_qat / t_float}


_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    t0 = time.perf_counter()
    from npusim.hw.config import NPUConfig
    from npusim.data import load_dataset
    from npusim.ir.program import load_program
    from npusim.sim.simulator import Simulator
    from npusim.ir import arith
    from npusim.sim import kernels
    prog = load_program(sys.argv[1])
    n = int(sys.argv[2])
    imgs = load_dataset("mnist5k", "test").subset(n).images
    t1 = time.perf_counter()
    Simulator(NPUConfig.preset("edge16")).run(prog, imgs[:1])
    t2 = time.perf_counter()
    if n > 1:
        Simulator(NPUConfig.preset("edge16")).run(prog, imgs)
    disp = [getattr(kernels, k) for k in dir(kernels) if k.endswith("_kernel")]
    disp += [arith._requant_kernel, arith._add_kernel]
    hits = sum(sum(d.stats.cache_hits.values()) for d in disp)
    misses = sum(sum(d.stats.cache_misses.values()) for d in disp)
    # VmHWM is this process image's own peak; getrusage's ru_maxrss also carries the parent's
    # peak across fork + exec on Linux (it reported the benchmark's 1.8 GB here)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print(json.dumps({"first_run_s": t2 - t1, "import_s": t1 - t0, "cache_hits": hits,
                      "cache_misses": misses,
                      "peak_rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else float("nan"),
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def child(program_path: str, n: int, env_extra: dict | None = None) -> dict:
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", _CHILD, program_path, str(n)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_process(program) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "resnet20_w8a8.npuprog.safetensors")
        from npusim.ir.program import save_program

        save_program(program, path)
        rss = child(path, 1000)
        child(path, 1)  # make sure the default cache is warm
        warm = child(path, 1)
        with tempfile.TemporaryDirectory() as empty:
            cold = child(path, 1, {"NUMBA_CACHE_DIR": empty})
    return {"peak_rss_1000_images_mb": rss["peak_rss_mb"],
            "ru_maxrss_incl_parent_mb": rss["ru_maxrss_mb"],
            "warm_cache_first_run_s": warm["first_run_s"],
            "warm_cache_hits": warm["cache_hits"], "warm_cache_misses": warm["cache_misses"],
            "empty_cache_first_run_s": cold["first_run_s"],
            "empty_cache_misses": cold["cache_misses"]}


# ----------------------------------------------------------------------------- narrow
NARROW_MARK = "<!-- perf_simulator --narrow -->"


def resnet18_program(seed: int = 0):
    """ResNet-18 (1000 classes, 3x224x224) W8A8 LSQ with random weights, activation
    quantizers calibrated on 8 random images: an ImageNet-sized program without training."""
    import torch

    from models import create_model
    from quantize import QuantConfig, build_program, calibrate, quantize_model

    torch.manual_seed(seed)
    net = create_model("resnet18", num_classes=1000, in_channels=3)
    q = quantize_model(net, QuantConfig(method="lsq", weight_bits=8, act_bits=8),
                       input_shape=(3, 224, 224))
    rng = np.random.default_rng(seed)
    calibrate(q, torch.from_numpy(rng.integers(0, 256, (8, 3, 224, 224)).astype(np.float32)))
    return build_program(q)


def cpu_flags() -> str:
    """The SIMD flags that decide the int8 paths (fbgemm's and the int8 engine's)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return "unknown"
    want = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in want)


def narrow_cases(widths: list[int]) -> dict:
    """name -> (NPU config, count_events)."""
    from npusim.hw.config import NPUConfig

    base = NPUConfig.preset("edge16")
    cases = {"exact (os, 32-bit)": (base, True)}
    for b in widths:
        over = {"precision.acc_bits": b, "precision.pe_acc_bits": b}
        ws = {"array.dataflow": "ws", "array.rows": 16, "array.cols": 16}
        wrap_os = base.with_overrides({**over, "precision.overflow": "wrap"})
        wrap_ws = base.with_overrides({**over, "precision.overflow": "wrap", **ws})
        cases[f"wrap {b} (os)"] = (wrap_os, True)
        cases[f"wrap {b} (os), no events"] = (wrap_os, False)
        cases[f"saturate {b} (ws 16x16)"] = (base.with_overrides(
            {**over, "precision.overflow": "saturate", **ws}), True)
        cases[f"wrap {b} (ws 16x16)"] = (wrap_ws, True)
        cases[f"wrap {b} (ws 16x16), no events"] = (wrap_ws, False)
    return cases


def narrow(program, batches: list[int], widths: list[int], repeats: int) -> pd.DataFrame:
    """Seconds per batch of each case against fbgemm's in the same run (best of `repeats`,
    fbgemm timed right before each case so both see the same load)."""
    from npusim.sim.simulator import Simulator

    fb = FbgemmNet(program)
    rng = np.random.default_rng(1)
    rows = []
    for batch in batches:
        x = rng.integers(0, 256, (batch, *program.tensors[program.input].shape)).astype(np.uint8)
        qx = fb.quantize_input(x)
        for name, (cfg, count_events) in narrow_cases(widths).items():
            sim = Simulator(cfg, count_events=count_events)
            sim.run(program, x)  # warm-up (plans, numba dispatch, the layers' screen hints)
            t_fb = best_of(lambda: fb.run(qx), repeats)
            last = []  # the counts of the last timed run (a layer's screen depends on the last)
            secs = best_of(lambda: last.append(sim.run(program, x)), repeats)
            st = last[-1].stats
            rows.append({"batch": batch, "case": name, "sim_s_per_image": secs / batch,
                         "fbgemm_s_per_image": t_fb / batch, "vs_fbgemm": secs / t_fb,
                         "sequential_outputs": int(st["sequential_outputs"].fillna(0).sum()),
                         "pe_overflows": int(st["pe_overflows"].fillna(0).sum())
                         if count_events else "not counted",
                         "acc_overflows": int(st["acc_overflows"].fillna(0).sum())
                         if count_events else "not counted",
                         "screened_chunks": int(st["screened_chunks"].fillna(0).sum()),
                         "walked_chunks": int(st["walked_chunks"].fillna(0).sum()),
                         "load_1min": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def narrow_main(args) -> None:
    import numba
    import torch

    load0 = os.getloadavg()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    program = resnet18_program()
    widths = [int(b) for b in args.widths.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    df = narrow(program, batches, widths, args.repeats)
    load1 = os.getloadavg()
    cmd = (f"python benchmarks/perf_simulator.py --narrow --widths {args.widths} "
           f"--batches {args.batches} --repeats {args.repeats}")
    md = f"""{NARROW_MARK}
## Narrow accumulators on ResNet-18 224x224 (issue 20)

Command: `{cmd}`; started {started}.
Machine: {os.cpu_count()} cores, {cpu_model()}; CPU flags: {cpu_flags()}; torch
{torch.__version__} ({torch.get_num_threads()} threads, fbgemm), numba threads
{numba.get_num_threads()}. Simulator engine: {engine_line()}.
Load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end
{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} (`load_1min`: before each case). **Measured under
load** on a shared machine: absolute seconds are noisy; `vs_fbgemm` divides two timings taken
back to back in this run (best of {args.repeats} each).

Network: ResNet-18 (1000 classes) W8A8 LSQ, random weights (seed 0), activations calibrated
on 8 random images; random uint8 inputs. `wrap b (os)`: b-bit accumulator, one running sum;
`saturate/wrap b (ws 16x16)`: b-bit PE and accumulator levels, chunks of 16 products. 14 bits
is refused for this program (a product needs 15 bits), so 15 is the narrowest width.
`no events`: `Simulator(cfg, count_events=False)`, the same output values without the
order-faithful walk (`accumulate.wrap_shortcut`), overflow events not counted.
`sequential_outputs`: outputs whose bound needed the order-faithful re-simulation;
`screened_chunks` / `walked_chunks`: of the chunks of those outputs' pixels (every channel),
those added at once by the chunk screen and those walked product by product
(`npusim.sim.screen`; both 0 where a layer takes the full walk).
fbgemm: the same graph through torch's quantized ops.

{fmt(df)}
"""
    write_section(Path(args.out), NARROW_MARK, md)
    print(f"wrote {args.out}")


# ----------------------------------------------------------------------------- report
def fmt(df: pd.DataFrame) -> str:
    from npusim.io import markdown_table

    return markdown_table(df, ".3g")


def write_section(path: Path, mark: str, md: str) -> None:
    """Put `md` (which starts with `mark`) in place of the section of `path` that starts at
    `mark` and runs to the next ``<!-- `` marker, or after the file's text; the other sections
    stay."""
    old = path.read_text() if path.exists() else ""
    head, _, rest = old.partition(mark)
    tail = rest.split("\n<!-- ", 1)[1] if "\n<!-- " in rest else ""
    head = head.rstrip()
    write_atomic(path, (head + "\n\n" if head else "") + md + ("\n<!-- " + tail if tail else ""))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and images")
    ap.add_argument("--out", default=str(ROOT / "reports" / "BENCHMARKS.md"))
    ap.add_argument("--program", default=None,
                    help="an IntegerProgram file to time instead of the cached W8A8 ResNet-20 "
                    "(lets two code versions be timed on one program without retraining)")
    ap.add_argument("--narrow", action="store_true",
                    help="only the ResNet-18 224x224 narrow-accumulator cases (issue 20); "
                    "writes their section of --out")
    ap.add_argument("--widths", default="16,15", help="--narrow: accumulator widths")
    ap.add_argument("--batches", default="2,1", help="--narrow: batch sizes")
    ap.add_argument("--repeats", type=int, default=2, help="--narrow: best of this many")
    args = ap.parse_args()
    if args.narrow:
        narrow_main(args)
        return
    import torch

    from npusim.data import load_dataset

    repeats = 3 if args.quick else 7
    sweep_images = 1000
    load0 = os.getloadavg()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    if args.program:
        from npusim.ir.program import load_program as read_program

        program = read_program(args.program)
    else:
        program = load_program(8)
    images = load_dataset("mnist5k", "test").subset(max(sweep_images, 64)).images
    rows, layer_rows = [], []
    throughput(program, images, repeats, rows, layer_rows)
    net = pd.DataFrame(rows)
    layers = pd.DataFrame(layer_rows)
    print(net.T.to_string(), flush=True)
    sweep = sweep_cost(program, images[:sweep_images], repeats)
    print(sweep, flush=True)
    qat = qat_epoch(512 if args.quick else 2048, 2 if args.quick else 3)
    print(qat, flush=True)
    fresh = fresh_process(program)
    print(fresh, flush=True)
    load1 = os.getloadavg()

    b64 = net[net["batch"] == 64].iloc[0]
    b1 = net[net["batch"] == 1].iloc[0]
    targets = pd.DataFrame([
        {"target": "exact, batch 64 <= 1.5x fbgemm (issue 20; issue 9 asked 2x)",
         "measured": b64["exact_vs_fbgemm"], "unit": "x fbgemm",
         "met": b64["exact_vs_fbgemm"] <= 1.5},
        {"target": "exact, batch 1 <= 3x fbgemm", "measured": b1["exact_vs_fbgemm"],
         "unit": "x fbgemm", "met": b1["exact_vs_fbgemm"] <= 3},
        {"target": "wrap, batch 64 <= 2x fbgemm", "measured": b64["wrap_vs_fbgemm"],
         "unit": "x fbgemm", "met": b64["wrap_vs_fbgemm"] <= 2},
        {"target": "wrap without event counts, batch 64 <= 2x fbgemm",
         "measured": b64["wrap_no_events_vs_fbgemm"], "unit": "x fbgemm",
         "met": b64["wrap_no_events_vs_fbgemm"] <= 2},
        {"target": "saturate (ws 16x16), batch 64 <= 4x fbgemm", "measured": b64["saturate_vs_fbgemm"],
         "unit": "x fbgemm", "met": b64["saturate_vs_fbgemm"] <= 4},
        {"target": ">= 50x NumPy int64 reference (exact, batch 64)",
         "measured": b64["exact_speedup_vs_numpy"], "unit": "x faster",
         "met": b64["exact_speedup_vs_numpy"] >= 50},
        {"target": "24-point sweep <= 3x one simulation", "measured": sweep["sweep_vs_one"],
         "unit": f"x one sim ({sweep['images']} images)", "met": sweep["sweep_vs_one"] <= 3},
        {"target": "LSQ QAT epoch <= 1.6x float epoch", "measured": qat["qat_vs_float"],
         "unit": "x float", "met": qat["qat_vs_float"] <= 1.6},
        {"target": "peak RSS, 1,000 images < 2 GB", "measured": fresh["peak_rss_1000_images_mb"],
         "unit": "MB", "met": fresh["peak_rss_1000_images_mb"] < 2048},
        {"target": "fresh process: no recompiles (cache misses)",
         "measured": fresh["warm_cache_misses"], "unit": "compiles", "met": fresh["warm_cache_misses"] == 0},
    ])
    print(targets.to_string(index=False))
    cmd = "python benchmarks/perf_simulator.py" + (" --quick" if args.quick else "")
    net_cols = ["batch", "macs", "fbgemm_s", "fbgemm_gmacs", "numpy_int64_gmacs"] + [
        f"{m}_{k}" for m in ("exact", "wrap", "wrap_no_events", "saturate")
        for k in ("s", "gmacs", "vs_fbgemm", "speedup_vs_numpy", "sequential_outputs")]
    md = f"""# Simulator performance (issue 9)

Command: `{cmd}`; started {started}.
Machine: {os.cpu_count()} cores, {cpu_model()}, {platform.platform()}; CPU flags: {cpu_flags()}; torch {torch.__version__}
({torch.get_num_threads()} threads, engine fbgemm), numba threads
{__import__('numba').get_num_threads()}.
Load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end
{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}. Absolute times on these machines are noisy;
every ratio compares timings taken in this run (best of {repeats}); each mode's
`*_vs_fbgemm` divides by fbgemm timed alternately with that mode (`fbgemm_s`: the best of
them all).
Simulator engine: {engine_line()}.

Network: ResNet-20 W8A8 (LSQ QAT, mnist5k, 1x28x28, {int(net.iloc[0]['macs'])} MAC per image);
`exact` = edge16 (os, 32-bit exact accumulators); `wrap` = {NARROW}-bit wrap (os), overflow
events counted; `wrap_no_events` = the same without event counts (`count_events=False`, the
CLI's `--no-count-events`: values by the modular shortcut, events reported unknown);
`saturate` = {NARROW}-bit saturate, ws dataflow on a 16x16 array (order-faithful). fbgemm =
the same graph through torch's quantized conv/linear/add/pool ops (quint8 activations,
per-channel qint8 weights); NumPy = int64 im2col + int64 matmul of the conv/linear layers
only (no adds/pools), on the simulator's own layer inputs.

## Targets

{fmt(targets)}

## Whole network

{fmt(net[net_cols].set_index('batch').T.reset_index().rename(columns={'index': 'metric'}))}

## Per layer (GMAC/s, and simulator time / fbgemm time)

{fmt(layers)}

## 24-point accumulator sweep (12 widths 17..28 x wrap/saturate, os), {sweep['images']} images

`sweep_s`: `npusim.sim.simulator.run_many` over the 24 configurations (a layer's engine sums,
exact accumulators and output are reused while its input is identical to one already
computed in the batch);
`separate_runs_estimate_vs_one`: 12x the time of two separate `Simulator.run` calls (the
points 17-bit wrap and 28-bit saturate, also checked equal to the shared run).

{fmt(pd.DataFrame([sweep]))}

## QAT epoch (resnet20, mnist5k, {qat['train_images']} training images, batch 128)

{fmt(pd.DataFrame([qat]))}

## Fresh process (subprocesses)

{fmt(pd.DataFrame([fresh]))}

`warm_cache_*`: a new process with the default numba cache (run once before); `empty_cache_*`:
`NUMBA_CACHE_DIR` pointing at an empty directory (every kernel compiles). Cache hits/misses
are numba's dispatcher statistics of the simulator's kernels.
"""
    out = Path(args.out)
    kept = out.read_text().split(NARROW_MARK, 1) if out.exists() else []
    if len(kept) == 2:  # the --narrow section survives a rerun of the main benchmark
        md = md.rstrip() + "\n\n" + NARROW_MARK + kept[1]
    write_atomic(out, md)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
