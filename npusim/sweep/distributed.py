"""Sweeps on a Dask cluster: the rows of `npusim.sweep.sweep`, computed by worker processes.

Two kinds of task run on the workers:

* a *training* per quantization setting (its QAT config hash), deduplicated across points:
  `quantize.cached.train_qat` (the worker's own model cache), exported to an IntegerProgram
  whose file bytes travel back to the client, so workers need no shared disk;
* a *simulation* per trained program and chunk of its NPU points: one `run_many` over the
  chunk (configurations share the work that is provably identical), costed there.

The client is the only writer of the results store. It stores each trained program
(``programs``) and each finished point the moment its task returns; a point is stored once
(`ResultsStore.put` keeps the first row). Before training a setting the client *claims* it in
the store and refreshes the claim while it runs, so several sweeps sharing a store train each
setting once: a sweep that finds a live claim waits for the program to appear in the store.
A killed worker's tasks are rerun by Dask (``retries`` and the scheduler's allowed
failures); a killed client resumes like the serial sweep (stored points and programs are not
recomputed; its stale claims are taken over at once on the same host, after ``stale_s``
elsewhere).

Rows equal the serial ones (timings aside) because every training runs under
`models.training.deterministic` with the sweep's ``train_threads`` (part of the point hash).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import pandas as pd

from npusim.sweep.grid import Grid, Point
from npusim.sweep.store import ResultsStore

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

__all__ = ["WORKER_ENV", "cluster_client", "sweep_distributed"]

#: The Dask setting that leaves glibc's malloc trimming alone in new workers (see
#: docs/cluster.md for workers started by hand).
NO_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"

#: Environment of LocalCluster workers: one thread per library (a worker is one core);
#: numba's threads are set per simulation task (`_pin_numba`).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None,
                   scheduler_file: str | os.PathLike | None = None,
                   connect_timeout: str = "30s") -> Iterator["Client"]:
    """A Dask client: of a new LocalCluster of `workers` single-threaded processes on
    127.0.0.1, or of the running scheduler at `scheduler` (tcp://HOST:PORT) or described by
    `scheduler_file`. Exactly one of the three must be given. A local cluster leaves this
    process's environment as it found it (Dask's nannies write OMP_NUM_THREADS=1 and the like
    into it while they start workers)."""
    given = [n for n, v in (("--workers", workers), ("--scheduler", scheduler),
                            ("--scheduler-file", scheduler_file)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of --workers, --scheduler, --scheduler-file "
                         f"(got {', '.join(given) or 'none'})")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(f"{given[0]}: needs dask.distributed (pip install "
                         f"'dask[distributed]')") from None
    if workers is not None:
        if workers < 1:
            raise ValueError(f"--workers: expected at least 1, got {workers}")
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
        # adaptive mmap threshold: every large tensor is then a fresh mmap, and training
        # ran 2.5x slower (measured: a QAT setting of resnet8 on digits, 5.0 s vs 2.0 s)
        # Dask's nannies also write their pre-spawn variables (OMP_NUM_THREADS=1 and the
        # like) into this process's environment before they spawn: the caller's come back
        # when the cluster closes, or every later subprocess would run on one thread
        saved = dict(os.environ)
        try:
            with dask.config.set({NO_TRIM_KEY: None}), \
                    LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address=None,
                                 env=WORKER_ENV) as cluster, \
                    Client(cluster) as client:
                yield client
        finally:
            for key in set(os.environ) - set(saved):
                del os.environ[key]
            os.environ.update(saved)
        return
    if scheduler_file is not None and not Path(scheduler_file).is_file():
        raise ValueError(f"--scheduler-file: {scheduler_file} not found")
    where = f"--scheduler-file {scheduler_file}" if scheduler_file else f"--scheduler {scheduler}"
    try:
        client = (Client(scheduler_file=str(scheduler_file), timeout=connect_timeout)
                  if scheduler_file is not None else Client(scheduler, timeout=connect_timeout))
    except (OSError, TimeoutError) as e:
        raise ValueError(f"{where}: cannot reach the scheduler "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    with client:
        yield client


# ----------------------------------------------------------------------- worker tasks

def program_bytes(program) -> bytes:
    """An IntegerProgram as the bytes of its .safetensors file."""
    from npusim.ir.program import save_program

    with tempfile.TemporaryDirectory(prefix="npusim-") as d:
        path = Path(d) / "program.safetensors"
        save_program(program, path)
        return path.read_bytes()


def program_from_bytes(blob: bytes, where: str = "<program bytes>"):
    """The IntegerProgram of `program_bytes` output (fully validated)."""
    from npusim.ir.program import ProgramError, load_program

    with tempfile.TemporaryDirectory(prefix="npusim-") as d:
        path = Path(d) / "program.safetensors"
        path.write_bytes(blob)
        try:
            return load_program(path)
        except ProgramError as e:
            raise ProgramError(str(e).replace(str(path), where)) from None


def _train_task(point: Point, model: str, dataset: str, epochs: int, float_epochs: int,
                seed: int, width: float, lr: float, root: str | None,
                threads: int) -> dict[str, Any]:
    """Train (or load from the worker's cache) one quantization setting; its program bytes."""
    from npusim.sweep.run import _program

    t0 = time.perf_counter()
    program, meta = _program(point, model, dataset, epochs, float_epochs, seed, width, lr, root,
                             threads)
    return {"program": program_bytes(program), "meta": meta,
            "seconds": time.perf_counter() - t0, "worker": _where()}


@functools.lru_cache(maxsize=4)
def _data(dataset: str, split: str, images: int | None, root: str | None):
    from npusim.data import load_dataset

    return load_dataset(dataset, split, root=root).subset(images)


def _simulate_task(blob: bytes, items: list[tuple[str, Point]], dataset: str, split: str,
                   images: int | None, root: str | None, batch: int) -> dict[str, Any]:
    """Simulate and cost the points `items` (hash, point) of one program through one
    `run_many`; returns their result columns and layer tables, and this worker's versions."""
    import torch  # noqa: F401  (the serial rows list its version: it made the program)

    from npusim.sim.simulator import SimulationError, Simulator, run_many
    from npusim.sweep.run import _finished, _rejected, _run_point, versions

    _pin_numba()
    program = program_from_bytes(blob)
    data = _data(dataset, split, images, root)
    out: dict[str, tuple[dict[str, Any], pd.DataFrame | None]] = {}
    runnable: list[tuple[str, Point, Simulator]] = []
    for h, point in items:  # an NPU that refuses the program is a stored "rejected" row
        sim = Simulator(point.npu)
        t0 = time.perf_counter()
        try:
            sim._plans_for(program)  # the checks of `Simulator.run`, kept for run_many
        except SimulationError as e:
            out[h] = (_rejected(e, time.perf_counter() - t0), None)
        else:
            runnable.append((h, point, sim))
    t0 = time.perf_counter()
    try:
        results = run_many([s for _, _, s in runnable], program, data.images)
    except SimulationError:  # a failure of one configuration: run them one by one
        for h, point, _ in runnable:
            out[h] = _run_point(point, program, data, batch)
    else:
        sim_s = (time.perf_counter() - t0) / max(len(runnable), 1)
        for (h, point, _), res in zip(runnable, results):
            out[h] = _finished(point, program, res, data, batch, sim_s)
    return {"points": out, "versions": versions(), "worker": _where(),
            "requant": program.requant}


def _pin_numba() -> None:
    """One numba thread: a worker thread is one core (start workers with ``--nthreads 1``,
    as many as there are cores)."""
    import numba

    numba.set_num_threads(1)


def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------ client

def _owner_dead(owner: str) -> bool:
    """True if a claim's owner is a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep_distributed(grid: Grid | Point | Sequence[Grid | Point], client: "Client", *,
                      model: str = "resnet20", dataset: str = "mnist5k", split: str = "test",
                      images: int | None = 500, epochs: int = 3, float_epochs: int = 15,
                      width: float = 1.0, seed: int = 0, lr: float = 0.01,
                      root: str | None = None, store: ResultsStore | str | Path | None = None,
                      batch: int = 1, progress: bool = False,
                      on_point: Callable[[dict[str, Any]], None] | None = None,
                      train_threads: int = 1, retries: int = 2, stale_s: float = 120.0,
                      poll_s: float = 1.0) -> pd.DataFrame:
    """`npusim.sweep.sweep` on the workers of `client`: the same rows (timings aside).

    Args beyond `sweep`'s:
        client: a `distributed.Client` (see `cluster_client`).
        retries: reruns of a task that raised (a killed worker's tasks are rerun anyway).
        stale_s: a claim not refreshed for this long is taken over (its sweep died).
        poll_s: how often the client refreshes its claims and looks for programs that
            another sweep sharing the store was training.
    """
    from npusim.sweep.run import _as_points, _plan, _row

    points = _as_points(grid)
    own = not isinstance(store, ResultsStore)
    db = store if isinstance(store, ResultsStore) else ResultsStore(store or ":memory:")
    try:
        data, keyed, order, groups = _plan(points, db, model, dataset, split, images, epochs,
                                           float_epochs, width, seed, lr, root, batch,
                                           train_threads)
        run = _Run(client, db, keyed, groups, progress, on_point, retries, stale_s, poll_s,
                   train_args=(model, dataset, epochs, float_epochs, seed, width, lr, root,
                               train_threads),
                   sim_args=(dataset, split, images, root, batch),
                   row_args=(model, dataset, split, len(data), width, seed, epochs,
                             float_epochs, lr),
                   total=len(order), row=_row)
        run.execute()
        return db.to_frame(order)
    finally:
        if own:
            db.close()


class _Run:
    """The client's event loop of one distributed sweep."""

    def __init__(self, client, db: ResultsStore, keyed, groups: dict[str, list[str]], progress,
                 on_point, retries, stale_s, poll_s, train_args, sim_args, row_args, total, row):
        self.client, self.db, self.keyed, self.groups = client, db, keyed, groups
        self.on_point, self.retries, self.stale_s, self.poll_s = on_point, retries, stale_s, poll_s
        self.train_args, self.sim_args, self.row_args = train_args, sim_args, row_args
        self.row = row
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pending: dict[Any, tuple[str, str]] = {}  # future -> ("train" | "sim", quant hash)
        self.waiting: set[str] = set()  # settings another sweep is training
        self.training: dict[str, str] = {}  # quant hash -> label, submitted trainings
        self.qmeta: dict[str, dict[str, Any]] = {}
        todo = sum(len(hs) for hs in groups.values())
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=total - todo, desc="sweep", unit="pt",
                        disable=not progress, dynamic_ncols=True, file=sys.stderr)
        workers = sum(client.nthreads().values()) or 1  # task slots (workers x threads)
        # one simulation task per program when there are enough programs to keep every
        # worker busy, else each program's points split over several tasks
        self.chunks = max(1, math.ceil(workers / max(len(groups), 1)))
        log.info("distributed sweep %s: %d points to run (%d settings) on %d workers",
                 self.owner, todo, len(groups), workers)

    def execute(self) -> None:
        from distributed import wait

        try:
            for qhash in self.groups:
                self._start(qhash)
            last_beat = time.monotonic()
            while self.pending or self.waiting:
                if self.pending:
                    try:
                        done = wait(list(self.pending), timeout=self.poll_s,
                                    return_when="FIRST_COMPLETED").done
                    except TimeoutError:
                        done = set()
                    for fut in done:
                        self._finish(fut)
                else:
                    time.sleep(self.poll_s)
                if time.monotonic() - last_beat >= self.poll_s:
                    self.db.heartbeat(self.owner)
                    last_beat = time.monotonic()
                    for qhash in list(self.waiting):
                        self._start(qhash)
                self._show()
        finally:
            if self.pending:
                self.client.cancel(list(self.pending))
            self.db.release(self.owner)
            self.bar.close()

    def _start(self, qhash: str) -> None:
        """Simulate a stored program, or claim and train it, or wait for another sweep."""
        stored = self.db.program(qhash)
        if stored is not None:
            self.waiting.discard(qhash)
            self._simulate(qhash, *stored)
            return
        holder = self.db.claims().get(qhash)
        if holder is not None and holder != self.owner and _owner_dead(holder):
            log.info("%s: claim of %s is stale (process gone)", qhash, holder)
            self.db.release(holder, qhash)
        if not self.db.claim(qhash, self.owner, self.stale_s):
            if qhash not in self.waiting:
                log.info("%s: trained by another sweep (%s); waiting for its program", qhash,
                         holder)
            self.waiting.add(qhash)
            return
        self.waiting.discard(qhash)
        stored = self.db.program(qhash)  # another sweep may have stored it and let go of its
        if stored is not None:  # claim between our first look and our claim
            self.db.release(self.owner, qhash)
            self._simulate(qhash, *stored)
            return
        point = self.keyed[self.groups[qhash][0]][0]
        log.info("%s: training %s on the cluster", qhash, point.quant.short_name())
        fut = self.client.submit(_train_task, point, *self.train_args, retries=self.retries,
                                 key=f"train-{point.quant.short_name()}-{qhash}-{self.owner}")
        self.pending[fut] = ("train", qhash)
        self.training[qhash] = point.quant.short_name()

    def _simulate(self, qhash: str, blob: bytes, meta: dict[str, Any]) -> None:
        self.qmeta[qhash] = meta
        # another sweep sharing the store may have run some of them meanwhile
        todo = [h for h in self.groups[qhash] if h not in self.db]
        self.bar.update(len(self.groups[qhash]) - len(todo))
        self.groups[qhash] = todo
        size = math.ceil(len(todo) / self.chunks) if todo else 1
        for i in range(0, len(todo), size):
            items = [(h, self.keyed[h][0]) for h in todo[i:i + size]]
            fut = self.client.submit(_simulate_task, blob, items, *self.sim_args,
                                     retries=self.retries,
                                     key=f"sim-{qhash}-{i}-{self.owner}")
            self.pending[fut] = ("sim", qhash)

    def _finish(self, fut) -> None:
        kind, qhash = self.pending.pop(fut)
        res = fut.result()  # re-raises a task's error (after its retries)
        if kind == "train":
            self.training.pop(qhash, None)
            self.db.put_program(qhash, res["program"], res["meta"])
            self.db.release(self.owner, qhash)
            log.info("%s: trained on %s in %.1f s", qhash, res["worker"], res["seconds"])
            stored = self.db.program(qhash)  # the first stored program wins (they are equal)
            assert stored is not None
            self._simulate(qhash, *stored)
            return
        for h, (result, layers) in res["points"].items():
            point = self.keyed[h][0]
            row = self.row(point, qhash, self.qmeta[qhash], result, *self.row_args,
                           res["requant"], vers=res["versions"])
            if self.db.put(h, row, layers) and self.on_point is not None:
                self.on_point({"point_hash": h, **row})
            self.bar.update(1)

    def _show(self) -> None:
        parts = []
        if self.training:
            parts.append("training " + ",".join(sorted(self.training.values())))
        if self.waiting:
            parts.append(f"{len(self.waiting)} trained elsewhere")
        self.bar.set_postfix_str("; ".join(parts), refresh=False)
