"""`sweep(...)`: run a grid of quantization x NPU configurations into one tidy DataFrame.

For every point: the QAT model of its quantization setting (trained once and cached by its
config hash by `quantize.cached.train_qat`, so NPU-only axes never retrain), exported to an
IntegerProgram, simulated bit-accurately on the point's NPU over the chosen split, and costed
(`npusim.cost.estimate_cost` with the simulator's counts). Each finished point is committed
to the results store at once; points already in the store are skipped, so an interrupted
sweep resumes where it stopped. A point the NPU refuses to run (say, an accumulator narrower
than one product) is stored too, with ``status = "rejected"`` and the simulator's reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from npusim.hw.config import NPUConfig
from npusim.ir.requant import RequantSpec, changes_text
from npusim.sweep.grid import Grid, Point
from npusim.sweep.store import ResultsStore

log = logging.getLogger(__name__)

__all__ = ["point_hash", "sweep"]

#: Columns of the per-layer table stored with each point (simulator stats + cost per layer).
LAYER_STAT_COLUMNS = ["layer", "op", "output_shape", "macs_per_image", "nonzero_macs",
                      "pe_overflows", "acc_overflows", "acc_min", "acc_max", "observed_bits",
                      "bound_l1_bits", "bound_dtype_bits", "pe_acc_bits", "acc_bits",
                      "overflow", "sequential_outputs"]
LAYER_COST_COLUMNS = ["w_bits", "a_bits", "out_bits", "cycles", "latency_us", "weight_bytes",
                      "energy_pj", "mac_pj", "operand_pj", "accumulator_pj", "requant_pj",
                      "vector_pj", "sram_pj", "lookup_pj", "dram_pj", "leakage_pj"]
COMPONENTS = ("mac", "operand", "accumulator", "requant", "vector", "sram", "lookup", "dram",
              "leakage")
#: Result columns of a point, in order (all None, except status and error, when rejected).
RESULT_COLUMNS = [
    "status", "error", "top1", "correct", "overflow_rate", "pe_overflows", "acc_overflows",
    "overflowing_layers", "max_observed_bits", "max_bound_l1_bits", "max_bound_dtype_bits",
    "energy_per_image_uj", *[f"{c}_uj" for c in COMPONENTS], "latency_us", "cycles",
    "stall_cycles", "avg_power_mw", "dynamic_power_mw", "leakage_power_mw",
    "weight_storage_kib", "peak_activation_kib", "energy_saving_vs_fp32",
    "energy_saving_vs_int8", "storage_saving_vs_fp32", "storage_saving_vs_int8",
    "fp32_energy_per_image_uj", "int8_energy_per_image_uj", "energy_table",
    "energy_table_version", "energy_table_overrides", "sim_seconds"]


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _training_config(point: Point, model: str, dataset: str, epochs: int, float_epochs: int,
                     seed: int, width: float, lr: float, threads: int = 1,
                     root: str | None = None) -> dict[str, Any]:
    from quantize.cached import qat_config

    return qat_config(model, dataset, point.quant, epochs, float_epochs, seed, width, lr,
                      threads, root)


def point_hash(training: dict[str, Any], npu: NPUConfig, evaluation: dict[str, Any]) -> str:
    """The key of a point: what trained the model, the whole NPU config, what was evaluated."""
    return _hash({"training": training, "npu": npu.model_dump(mode="json"),
                  "evaluation": evaluation})


def versions() -> dict[str, str]:
    """Versions of what determines a result (torch only if it was imported)."""
    import numba
    import numpy

    from npusim import __version__

    out = {"npusim_version": __version__, "numpy_version": numpy.__version__,
           "numba_version": numba.__version__, "pandas_version": pd.__version__,
           "python_version": platform.python_version()}
    if "torch" in sys.modules:
        out["torch_version"] = sys.modules["torch"].__version__
    return out


# ------------------------------------------------------------------------ row building

def _npu_columns(npu: NPUConfig, program_requant: RequantSpec) -> dict[str, Any]:
    """Every NPU field as a column named by its leaf key (they are unique across sections);
    the requant keys are what ran (the program's spec under the NPU's pinned keys), and
    ``requant_changes`` says where the NPU's differ from the program's ("" if nowhere)."""
    cols: dict[str, Any] = {"npu": npu.name, "npu_hash": npu.config_hash()}
    dump = npu.model_dump(mode="json")
    for section, body in dump.items():
        if isinstance(body, dict):
            for k, v in body.items():
                cols[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
    cols.update(npu.requant.over(program_requant).to_dict())
    cols["requant_changes"] = changes_text(npu.requant.changes(program_requant))
    # the [[layer]] tables, "stem*:acc_bits=24+fc:overflow=saturate" ("" when none)
    cols["layer_tables"] = "+".join(t.short() for t in npu.layer)
    p = npu.precision
    cols["pe_overflow"], cols["acc_overflow"] = p.pe_mode, p.acc_mode
    cols["overflow_mode"] = p.acc_mode if p.pe_mode == p.acc_mode else f"{p.pe_mode}/{p.acc_mode}"
    return cols


def _quant_columns(point: Point) -> dict[str, Any]:
    q = point.quant
    label = q.short_name()
    if q.overrides:
        from npusim.sweep.grid import _override_text

        label += "+" + "+".join(_override_text(o) for o in q.overrides)
    cols = {"quant_label": label, "method": q.method, "weight_bits": q.weight_bits,
            "act_bits": q.act_bits, "wa": f"W{q.weight_bits}A{q.act_bits}",
            "first_layer_bits": q.first_layer_bits, "last_layer_bits": q.last_layer_bits,
            "residual_bits": q.residual_bits,
            "overrides": "+".join(_ov(o) for o in q.overrides) if q.overrides else "",
            "quant_config": q.model_dump_json()}
    for key, v in point.quant_set:  # swept keys not already a column
        for k in key.split(","):
            if k not in cols and k not in ("bits",):
                cols[f"quant_{k.replace('.', '_')}"] = v
    return cols


def _ov(o: Any) -> str:
    from npusim.sweep.grid import _override_text

    return _override_text(o)


def _layer_table(stats: pd.DataFrame, cost_layers: pd.DataFrame | None) -> pd.DataFrame:
    lay = stats[[c for c in LAYER_STAT_COLUMNS if c in stats]].copy()
    if cost_layers is not None:
        cl = cost_layers[["layer", *[c for c in LAYER_COST_COLUMNS if c in cost_layers]]]
        lay = lay.merge(cl, on="layer", how="left")
    return lay


def _result_columns(res, labels, stats: pd.DataFrame, rep) -> dict[str, Any]:
    from npusim.sim.simulator import overflow_rate

    conv = stats.dropna(subset=["observed_bits"]) if "observed_bits" in stats else stats
    out: dict[str, Any] = {
        "status": "ok", "error": "",
        "top1": res.accuracy(labels),
        "overflow_rate": overflow_rate(stats),
        "pe_overflows": int(stats["pe_overflows"].fillna(0).sum()),
        "acc_overflows": int(stats["acc_overflows"].fillna(0).sum()),
        "overflowing_layers": int(((conv["pe_overflows"].fillna(0) + conv["acc_overflows"]
                                    .fillna(0)) > 0).sum()),
        "max_observed_bits": int(conv["observed_bits"].max()) if len(conv) else None,
        "max_bound_l1_bits": int(conv["bound_l1_bits"].max()) if len(conv) else None,
        "max_bound_dtype_bits": int(conv["bound_dtype_bits"].max()) if len(conv) else None,
    }
    t = rep.total
    out.update({
        "energy_per_image_uj": t["energy_per_image_pj"] * 1e-6,
        **{f"{c}_uj": t[f"{c}_pj"] * 1e-6 for c in COMPONENTS},
        "latency_us": t["latency_us"], "cycles": t["cycles"], "stall_cycles": t["stall_cycles"],
        "avg_power_mw": t["avg_power_mw"], "dynamic_power_mw": t["dynamic_power_mw"],
        "leakage_power_mw": t["leakage_power_mw"],
        "weight_storage_kib": t["weight_storage_bytes"] / 1024,
        "peak_activation_kib": t["peak_activation_bytes"] / 1024,
        "energy_saving_vs_fp32": t["energy_saving_vs_fp32"],
        "energy_saving_vs_int8": t["energy_saving_vs_int8"],
        "storage_saving_vs_fp32": t["storage_saving_vs_fp32"],
        "storage_saving_vs_int8": t["storage_saving_vs_int8"],
        "fp32_energy_per_image_uj": t["fp32_energy_per_image_pj"] * 1e-6,
        "int8_energy_per_image_uj": t["int8_energy_per_image_pj"] * 1e-6,
        "energy_table": t["table_name"], "energy_table_version": t["table_version"],
        "energy_table_overrides": t["table_overrides"],
    })
    return out


# ------------------------------------------------------------------------------- sweep

def _as_points(grid: Grid | Point | Iterable[Grid | Point]) -> list[Point]:
    items = [grid] if isinstance(grid, (Grid, Point)) else list(grid)
    out: list[Point] = []
    for it in items:
        out.extend(it.points() if isinstance(it, Grid) else [it])
    return out


def sweep(grid: Grid | Point | Sequence[Grid | Point], *, model: str = "resnet20",
          dataset: str = "mnist5k", split: str = "test", images: int | None = 500,
          epochs: int = 3, float_epochs: int = 15, width: float = 1.0, seed: int = 0,
          lr: float = 0.01, root: str | None = None,
          store: ResultsStore | str | Path | None = None, batch: int = 1,
          progress: bool = False,
          on_point: Callable[[dict[str, Any]], None] | None = None,
          train_threads: int = 1) -> pd.DataFrame:
    """Run every point of `grid` not yet in `store`; return the grid's rows (grid order).

    Args:
        grid: a `Grid`, a list of grids and/or points (duplicates are run once).
        model, dataset, width, seed: the float model (`models.cached.train_float`).
        epochs, float_epochs, lr: QAT fine-tuning epochs / float epochs / QAT learning rate.
        split, images: what is simulated (the first `images` of the split; None: all).
        store: a `ResultsStore` or a path to one (None: in memory, nothing persists).
        batch: images per batch for the cost model (weights reused across a batch).
        progress: show a tqdm bar (points done / total and the current point).
        on_point: called with each new row as it is committed.
        train_threads: torch threads of every training (part of its cache key and of the
            point hash; `npusim.sweep.distributed` runs the same trainings on a cluster).
    """
    points = _as_points(grid)
    own = not isinstance(store, ResultsStore)
    db = store if isinstance(store, ResultsStore) else ResultsStore(store or ":memory:")
    try:
        return _run(points, db, model, dataset, split, images, epochs, float_epochs, width, seed,
                    lr, root, batch, progress, on_point, train_threads)
    finally:
        if own:
            db.close()


def _plan(points, db, model, dataset, split, images, epochs, float_epochs, width, seed, lr, root,
          batch, train_threads=1):
    """(data, keyed, order, groups): the simulated images, every point by its hash, the grid
    order, and the hashes not yet in `db` grouped by their QAT config hash."""
    from models.checkpoint import config_hash
    from npusim.data import load_dataset

    data = load_dataset(dataset, split, root=root).subset(images)
    evaluation = {"dataset": dataset, "split": split, "images": len(data), "cost_batch": batch}
    keyed: dict[str, tuple[Point, dict[str, Any]]] = {}
    for p in points:
        train = _training_config(p, model, dataset, epochs, float_epochs, seed, width, lr,
                                 train_threads, root)
        keyed.setdefault(point_hash(train, p.npu, evaluation), (p, train))
    order = list(keyed)
    done = db.done()
    # run the points of one trained model together (each model is loaded once)
    groups: dict[str, list[str]] = {}
    for h in order:
        if h not in done:
            groups.setdefault(config_hash(keyed[h][1]), []).append(h)
    return data, keyed, order, groups


def _row(point: Point, qhash: str, qmeta: dict[str, Any], result: dict[str, Any], model, dataset,
         split, images, width, seed, epochs, float_epochs, lr, program_requant: dict[str, Any],
         vers: dict[str, str] | None = None) -> dict[str, Any]:
    """The stored row of one finished point (`program_requant`: the program's manifest
    ``requant``; `vers`: where it ran; default: here)."""
    return {"point_label": point.label(), "model": model, "dataset": dataset,
            "split": split, "images": images, "width": width, "seed": seed,
            "qat_epochs": epochs, "float_epochs": float_epochs, "qat_lr": lr,
            "quant_hash": qhash, **_quant_columns(point),
            "fake_quant_top1": qmeta.get("fake_quant_acc"),
            "integer_top1": qmeta.get("integer_acc"),
            **_npu_columns(point.npu, RequantSpec.from_dict(program_requant)), **result,
            **(vers or versions())}


def _run(points, db, model, dataset, split, images, epochs, float_epochs, width, seed, lr, root,
         batch, progress, on_point, train_threads=1) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from models.checkpoint import config_hash

    data, keyed, order, groups = _plan(points, db, model, dataset, split, images, epochs,
                                       float_epochs, width, seed, lr, root, batch, train_threads)
    todo = [h for hs in groups.values() for h in hs]
    log.info("sweep: %d points, %d already stored, %d to run", len(order), len(order) - len(todo),
             len(todo))
    bar = tqdm(total=len(order), initial=len(order) - len(todo), desc="sweep", unit="pt",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    programs: dict[str, tuple[Any, dict[str, Any]]] = {}
    try:
        for h in todo:
            point, train = keyed[h]
            bar.set_postfix_str(point.label(), refresh=True)
            qhash = config_hash(train)  # the QAT cache key (quantize.cached)
            if qhash not in programs:
                programs.clear()  # one program alive at a time
                programs[qhash] = _program(point, model, dataset, epochs, float_epochs, seed,
                                           width, lr, root, train_threads)
            program, qmeta = programs[qhash]
            result, layers = _run_point(point, program, data, batch)
            row = _row(point, qhash, qmeta, result, model, dataset, split, len(data), width, seed,
                       epochs, float_epochs, lr, program.requant)
            if db.put(h, row, layers) and on_point is not None:
                on_point({"point_hash": h, **row})
            bar.update(1)
    finally:
        bar.close()
    return db.to_frame(order)


def _program(point, model, dataset, epochs, float_epochs, seed, width, lr, root, threads=1):
    """The exported IntegerProgram of a point's quantization setting (trained or cached)."""
    from quantize.cached import train_qat
    from quantize.export import build_program

    t0 = time.perf_counter()
    qmodel, meta = train_qat(model, dataset, point.quant, epochs=epochs,
                             float_epochs=float_epochs, seed=seed, width=width, lr=lr, root=root,
                             progress=False, threads=threads)
    log.info("%s: QAT model ready in %.1f s", point.quant.short_name(), time.perf_counter() - t0)
    return build_program(qmodel), meta


def _run_point(point: Point, program, data, batch) -> tuple[dict[str, Any],
                                                              pd.DataFrame | None]:
    from npusim.sim.simulator import SimulationError, Simulator

    t0 = time.perf_counter()
    try:
        res = Simulator(point.npu).run(program, data.images)
    except SimulationError as e:
        return _rejected(e, time.perf_counter() - t0), None
    return _finished(point, program, res, data, batch, time.perf_counter() - t0)


def _rejected(error: Exception, sim_s: float) -> dict[str, Any]:
    """The result columns of a point the NPU refused."""
    cols: dict[str, Any] = {k: None for k in RESULT_COLUMNS}
    cols.update(status="rejected", error=str(error).splitlines()[0], sim_seconds=sim_s)
    return cols


def _finished(point: Point, program, res, data, batch: int, sim_s: float
              ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The result columns and per-layer table of a simulated point (costed here)."""
    from npusim.cost import estimate_cost

    rep = estimate_cost(program, point.npu, stats=res.stats, images=batch)
    cols = _result_columns(res, data.labels, res.stats, rep)
    cols["correct"] = int(round(cols["top1"] * len(data)))
    cols["sim_seconds"] = sim_s
    return {k: cols[k] for k in RESULT_COLUMNS}, _layer_table(res.stats, rep.layers)
