"""ImageNet-sized exact simulation against fbgemm (issue 20): ResNet-18 and MobileNetV2 at
3x224x224, W8A8, batch 32, peak RSS, seconds per 1,000 images.

    PYTHONPATH=. python benchmarks/perf_imagenet.py [--batch 32] [--repeats 3]

Each model runs in its own child process (so its peak RSS is its own): the child builds the
program (random weights, activation quantizers calibrated on 8 random images), times
fbgemm (the same graph through torch's quantized ops, `perf_simulator.FbgemmNet`) and the
simulator on `edge16` (os, 32-bit exact accumulators) back to back, best of `--repeats`
each, and reports the simulator's engine per layer. The section it writes replaces the one
of the same title in reports/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_simulator import FbgemmNet, best_of, cpu_flags, cpu_model, engine_line, fmt, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- perf_imagenet -->"
MODELS = ("resnet18", "mobilenetv2")


def program_224(model: str, seed: int = 0):
    """`model` (1000 classes, 3x224x224) W8A8 LSQ with random weights, activation quantizers
    calibrated on 8 random images: an ImageNet-sized program without training."""
    import torch

    from models import create_model
    from quantize import QuantConfig, build_program, calibrate, quantize_model

    torch.manual_seed(seed)
    net = create_model(model, num_classes=1000, in_channels=3)
    q = quantize_model(net, QuantConfig(method="lsq", weight_bits=8, act_bits=8),
                       input_shape=(3, 224, 224))
    rng = np.random.default_rng(seed)
    calibrate(q, torch.from_numpy(rng.integers(0, 256, (8, 3, 224, 224)).astype(np.float32)))
    return build_program(q)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile_rows(sim, program, x, top: int = 6) -> list[dict]:
    """The functions where one simulator run spends most of its own time (cProfile)."""
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    sim.run(program, x)
    pr.disable()
    st = pstats.Stats(pr).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    rows = sorted(((f"{Path(k[0]).name}:{k[2]}", v[2], v[1]) for k, v in st.items()),
                  key=lambda r: -r[1])[:top]
    return [{"function": f, "seconds_per_image": t / len(x), "calls": n} for f, t, n in rows]


def child(model: str, batch: int, repeats: int) -> dict:
    """Build, time fbgemm and the simulator, report seconds and peak RSS (run in a child);
    then profile one more simulator run."""
    from npusim.hw.config import NPUConfig
    from npusim.sim.simulator import Simulator

    program = program_224(model)
    fb = FbgemmNet(program)
    x = np.random.default_rng(1).integers(0, 256, (batch, 3, 224, 224)).astype(np.uint8)
    qx = fb.quantize_input(x)
    rss_before = _rss_mb()
    sim = Simulator(NPUConfig.preset("edge16"))
    res = sim.run(program, x)  # warm-up: plans, numba dispatch
    t_fb = best_of(lambda: fb.run(qx), repeats)
    t_sim = best_of(lambda: sim.run(program, x), repeats)
    st = res.stats
    return {"model": model, "batch": batch, "macs_per_image": int(st["macs_per_image"].sum()),
            "sim_s_per_image": t_sim / batch, "fbgemm_s_per_image": t_fb / batch,
            "vs_fbgemm": t_sim / t_fb, "sim_s_per_1000_images": 1000 * t_sim / batch,
            "fbgemm_s_per_1000_images": 1000 * t_fb / batch,
            "sequential_outputs": int(st["sequential_outputs"].fillna(0).sum()),
            "peak_rss_mb_before_sim": round(rss_before), "peak_rss_mb": round(_rss_mb()),
            "engine": sim.engine_used, "load_1min": os.getloadavg()[0],
            "profile": profile_rows(sim, program, x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(ROOT / "reports" / "BENCHMARKS.md"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.repeats)))
        return
    import numba
    import torch

    load0 = os.getloadavg()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    rows = []
    for model in args.models.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", model, "--batch", str(args.batch),
                              "--repeats", str(args.repeats)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    load1 = os.getloadavg()
    profiles = {r["model"]: pd.DataFrame(r.pop("profile")) for r in rows}
    df = pd.DataFrame(rows)
    prof_md = "\n\n".join(f"Profile, {m} (one simulator run, cProfile, own time):\n\n{fmt(p)}"
                           for m, p in profiles.items())
    cmd = (f"PYTHONPATH=. python benchmarks/perf_imagenet.py --batch {args.batch} "
           f"--repeats {args.repeats}")
    md = f"""{MARK}
## ImageNet-sized, exact (issue 20): ResNet-18 and MobileNetV2 at 224x224

Command: `{cmd}`; started {started}.
Machine: {os.cpu_count()} cores, {cpu_model()}; CPU flags: {cpu_flags()}; torch
{torch.__version__} ({torch.get_num_threads()} threads, fbgemm), numba threads
{numba.get_num_threads()}. Simulator engine: {engine_line()}.
Load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end
{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}. Each model in its own process; fbgemm and the
simulator timed back to back, best of {args.repeats} each; `vs_fbgemm` divides the two.

Programs: W8A8 LSQ, random weights (seed 0), activations calibrated on 8 random images,
random uint8 inputs, batch {args.batch}; simulator on `edge16` (os, 32-bit exact
accumulators: no order-faithful walk). `peak_rss_mb`: the child's peak resident set (float
model, program, fbgemm peer and simulator together); `peak_rss_mb_before_sim` the same
before the first simulation. `engines`: how many layers each engine ran.

{fmt(df)}

{prof_md}
"""
    write_section(Path(args.out), MARK, md)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
