"""Hardware-only sweeps: one given IntegerProgram on a grid of NPU settings, no training.

`sweep_program(program, points, ...)` simulates every point not yet in the store with one
`npusim.sim.simulator.run_many` call (work that is provably identical between the points is
shared), costs it, and stores one row per point in the same format as `npusim.sweep.sweep`
(the quantization columns come from the program's own manifest). A point's key is the hash of
the program's contents, the whole NPU config and what was evaluated. A point the NPU refuses
(a product wider than an accumulator, a requantization product over 64 bits) is stored with
``status = "rejected"`` and its one-line reason in ``error``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from npusim.ir.program import IntegerProgram
from npusim.ir.requant import RequantSpec
from npusim.sweep.grid import Point
from npusim.sweep.run import RESULT_COLUMNS, _finished, _hash, _npu_columns, _rejected, versions
from npusim.sweep.store import ResultsStore

log = logging.getLogger(__name__)

__all__ = ["program_hash", "sweep_program"]


def program_hash(program: IntegerProgram) -> str:
    """First 16 hex digits of the SHA-256 of the program's manifest and every array's bytes."""
    h = hashlib.sha256(json.dumps(program.manifest(), sort_keys=True, default=str).encode())
    for name in sorted(program.arrays):
        a = np.ascontiguousarray(program.arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _program_columns(program: IntegerProgram, phash: str, label: str) -> dict[str, Any]:
    """The quantization columns of a sweep row, read from the program's manifest."""
    q = program.quant_config or {}
    w, a = q.get("weight_bits"), q.get("act_bits")
    return {"model": program.meta.get("model", ""), "quant_hash": phash, "program": label,
            "quant_label": label, "method": q.get("method"), "weight_bits": w, "act_bits": a,
            "wa": f"W{w}A{a}" if w is not None and a is not None else "",
            "quant_config": json.dumps(q, sort_keys=True, default=str)}


def sweep_program(program: IntegerProgram, points: Sequence[Point], images: np.ndarray,
                  labels: np.ndarray, *, evaluation: dict[str, Any], label: str = "program",
                  store: ResultsStore | None = None, batch: int = 1,
                  engine: str = "auto") -> pd.DataFrame:
    """Run every point of `points` (their NPU configs; the quantization half is ignored) on
    `program` over `images`, store the rows not yet in `store`; return the points' rows in
    order. `evaluation` (data set, split, image count) is part of every point's key."""
    from npusim.sim.simulator import SimulationError, Simulator, run_many

    db = store if store is not None else ResultsStore(":memory:")
    phash = program_hash(program)
    keyed: dict[str, Point] = {}
    for p in points:
        keyed.setdefault(_hash({"program": phash, "npu": p.npu.model_dump(mode="json"),
                                "evaluation": {**evaluation, "cost_batch": batch}}), p)
    done = db.done()
    todo = [h for h in keyed if h not in done]
    log.info("hardware sweep: %d points, %d stored, %d to run", len(keyed),
             len(keyed) - len(todo), len(todo))
    sims: dict[str, Any] = {}
    rows: dict[str, tuple[dict[str, Any], pd.DataFrame | None]] = {}
    for h in todo:  # plan each point alone: a refusal is that point's row, not an abort
        sim = Simulator(keyed[h].npu, engine=engine)
        t0 = time.perf_counter()
        try:
            sim._plans_for(program)
        except SimulationError as e:
            rows[h] = (_rejected(e, time.perf_counter() - t0), None)
            continue
        sims[h] = sim
    if sims:
        t0 = time.perf_counter()
        results = run_many(list(sims.values()), program, images)
        sim_s = (time.perf_counter() - t0) / len(sims)
        data = _Data(images, labels)
        for h, res in zip(sims, results):
            rows[h] = _finished(keyed[h], program, res, data, batch, sim_s)
    base = _program_columns(program, phash, label)
    vers = versions()
    for h in todo:
        result, layers = rows[h]
        p = keyed[h]
        row = {"point_label": _label(p), **base, **evaluation,
               **_npu_columns(p.npu, RequantSpec.from_dict(program.requant)),
               **{k: result[k] for k in RESULT_COLUMNS}, **vers}
        db.put(h, row, layers)
    out = db.to_frame(list(keyed))
    if store is None:
        db.close()
    return out


def _label(p: Point) -> str:
    """``acc_bits=12 overflow=wrap`` (the swept NPU values), or ``(base)``."""
    return p.label().split(" ", 1)[1] if p.npu_set else "(base)"


class _Data:
    """What `npusim.sweep.run._finished` reads of a data set: labels and a length."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

