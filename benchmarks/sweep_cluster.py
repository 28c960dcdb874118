"""Serial sweep vs the same sweep on a local Dask cluster; a projection to more workers.

24 points: 4 QAT settings (lsq W8A8, W6A6, W4A4, W3A3) x accumulator 12/14/16 bits x
wrap/saturate on edge16. Each run starts from an empty model cache and an empty store, so
both train the 4 settings. Measured: wall time, the training and simulation task times (Dask's
task stream; serial: QAT-ready log lines and the rows' ``sim_seconds``), and whether the rows
are equal. The projection to `--project` workers list-schedules the measured task times (the
4 trainings in parallel, then each program's points split over the idle workers, as
`npusim.sweep.distributed` splits them), plus the measured cluster start.

    python benchmarks/sweep_cluster.py --workers 2 --out reports/sweep_cluster.md
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

BITS = "8/8,6/6,4/4,3/3"
SETS = ["precision.pe_acc_bits,precision.acc_bits=12,14,16", "precision.overflow=wrap,saturate"]


class _Ready(logging.Handler):
    """Collects the serial sweep's 'QAT model ready in X s' lines."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "npusim.sweep.run" and "QAT model ready" in record.msg:
            self.seconds.append(float(record.args[1]))


def run(args: argparse.Namespace) -> str:
    from distributed import get_task_stream

    from npusim.sweep import Grid, sweep
    from npusim.sweep.distributed import cluster_client, sweep_distributed

    grid = Grid.parse([f"bits={BITS}"], SETS)
    kw = dict(model=args.model, dataset=args.data, width=args.width, epochs=args.epochs,
              float_epochs=args.float_epochs, images=args.images)
    tmp = Path(tempfile.mkdtemp(prefix="sweep-cluster-"))

    os.environ["NPUSIM_CACHE"] = str(tmp / "serial-cache")
    ready = _Ready()
    logging.getLogger("npusim.sweep.run").addHandler(ready)
    logging.getLogger("npusim.sweep.run").setLevel(logging.INFO)
    t0 = time.perf_counter()
    serial = sweep(grid, store=tmp / "serial.sqlite", **kw)
    serial_s = time.perf_counter() - t0

    os.environ["NPUSIM_CACHE"] = str(tmp / "worker-cache")
    t0 = time.perf_counter()
    with cluster_client(workers=args.workers) as client:
        start_s = time.perf_counter() - t0
        with get_task_stream(client) as ts:
            t1 = time.perf_counter()
            dist = sweep_distributed(grid, client, store=tmp / "dist.sqlite", **kw)
            sweep_s = time.perf_counter() - t1
    drop = ["sim_seconds", "finished_at"]
    equal = serial.drop(columns=drop).equals(dist.drop(columns=drop))

    tasks = []
    for t in ts.data:
        for ss in t["startstops"]:
            if ss["action"] == "compute":
                key = str(t["key"])
                tasks.append({"kind": key.split("-")[0], "key": key,
                              "seconds": ss["stop"] - ss["start"]})
    tt = pd.DataFrame(tasks)
    train = tt[tt["kind"] == "train"]["seconds"]
    sims = tt[tt["kind"] == "sim"]["seconds"]

    # projection: every training on its own worker, then the program's points over
    # ceil(W / settings) workers each (sim time divides, per-task overhead ignored)
    n_set = len(train)
    per_prog_sim = sims.sum() / max(n_set, 1)

    def makespan(w: int) -> float:
        waves = math.ceil(n_set / w)
        chunks = max(1, math.ceil(w / n_set))
        return waves * (train.max() + per_prog_sim / chunks)

    serial_sim = float(serial["sim_seconds"].sum())
    lines = [
        "# Sweep on a local Dask cluster vs serial",
        "",
        f"Command: `python benchmarks/sweep_cluster.py --workers {args.workers} --model "
        f"{args.model} --data {args.data} --width {args.width} --epochs {args.epochs} "
        f"--float-epochs {args.float_epochs} --images {args.images}`",
        "",
        f"24 points: lsq {BITS} x accumulator 12/14/16 bits x wrap/saturate (edge16), "
        f"{args.images} {args.data} test images each; empty model caches and stores. "
        f"Machine: {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.1f} (shared machine: absolute times are noisy).",
        "",
        "| run | wall s | training s (sum) | simulation s (sum) | rows equal |",
        "|---|---|---|---|---|",
        f"| serial (1 training thread) | {serial_s:.1f} | {sum(ready.seconds):.1f} | "
        f"{serial_sim:.1f} | - |",
        f"| {args.workers} workers: cluster start | {start_s:.1f} | | | |",
        f"| {args.workers} workers: sweep | {sweep_s:.1f} | {train.sum():.1f} "
        f"({len(train)} tasks, max {train.max():.1f}) | {sims.sum():.1f} ({len(sims)} tasks) | "
        f"{'yes' if equal else 'NO'} |",
        "",
        f"Speed-up of the sweep itself: {serial_s / sweep_s:.2f}x "
        f"({serial_s / (sweep_s + start_s):.2f}x with the cluster start).",
        "",
        "Projection from the measured task times (trainings in parallel, each program's "
        "points split over the idle workers; scheduling overhead and the first numba compile "
        "per worker not modelled):",
        "",
        "| workers | projected sweep s | speed-up vs serial |",
        "|---|---|---|",
    ]
    for w in (args.workers, 4, 8, args.project):
        m = makespan(w)
        lines.append(f"| {w} | {m:.1f} | {serial_s / m:.1f}x |")
    lines += ["", "With 4 settings, trainings bound the sweep beyond 4 workers: more workers "
              "only split the simulations. Task times on a cluster include each worker's "
              "first import of torch and numba compile (cached on disk after the first run)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--project", type=int, default=16)
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--float-epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    text = run(args)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
