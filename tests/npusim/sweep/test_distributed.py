"""Distributed sweeps: the store's claims, a 2-worker LocalCluster giving the serial rows, a
worker killed with SIGKILL mid-sweep, and two sweeps sharing a store training each setting
once. Every service listens on 127.0.0.1 and is started here."""

import logging
import os
import shutil
import signal
import threading
import time

import pandas as pd
import pytest

pytest.importorskip("distributed")

from npusim.cli.app import main  # noqa: E402
from npusim.sweep import Grid, ResultsStore, sweep  # noqa: E402
from npusim.sweep.distributed import (  # noqa: E402
    cluster_client,
    program_bytes,
    program_from_bytes,
    sweep_distributed,
)

TINY = dict(model="resnet8", dataset="digits", width=0.25, epochs=1, float_epochs=1, images=24)
#: 2 settings x 4 NPU points; the 12-bit accumulator refuses the 8-bit first layer (rejected rows)
GRID = Grid.parse(["bits=4/4,3/3"], ["precision.pe_acc_bits,precision.acc_bits=12,16",
                                     "precision.overflow=wrap,saturate"])
TIMINGS = ["sim_seconds", "finished_at"]


def rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMINGS).reset_index(drop=True)


# ------------------------------------------------------------------- store claims (fast)

def test_claims_are_exclusive_refreshable_and_go_stale(tmp_path):
    path = tmp_path / "s.sqlite"
    with ResultsStore(path) as a, ResultsStore(path) as b:  # two sweeps, two connections
        assert a.claim("q1", "A") and a.claim("q1", "A")  # ours, and still ours
        assert not b.claim("q1", "B", stale_s=60)
        assert b.claims() == {"q1": "A"}
        time.sleep(0.05)
        assert b.claim("q1", "B", stale_s=0.01)  # A stopped refreshing: taken over
        assert not a.claim("q1", "A", stale_s=60)
        b.heartbeat("B")
        b.release("B", "q1")
        assert a.claim("q1", "A")
        a.release("A")
        assert a.claims() == {}
        assert a.put_program("q1", b"\x00\x01", {"integer_acc": 0.5})
        assert not b.put_program("q1", b"other", {})  # the first program is kept
        assert b.program("q1") == (b"\x00\x01", {"integer_acc": 0.5})
        assert b.program("q2") is None


def test_claims_of_a_dead_client_on_this_host_are_recognised():
    import socket
    import subprocess
    import sys

    from npusim.sweep.distributed import _owner_dead

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    assert _owner_dead(f"{host}:{gone}:abc")  # a killed client: its claims are taken over
    assert not _owner_dead(f"{host}:{os.getpid()}:abc")  # alive
    assert not _owner_dead(f"elsewhere-{host}:{gone}:abc")  # another host: wait for stale_s


def test_two_sweeps_creating_one_store_at_once_both_open_it(tmp_path):
    """Two connections creating the same new store at the same moment (two sweeps started
    together): SQLite answers the WAL switch with "database is locked" at once, without
    waiting (about 8% of such pairs); the store retries it, so both open the store."""
    errors = []

    def open_store(path, barrier):
        barrier.wait()
        try:
            with ResultsStore(path):
                pass
        except Exception as e:  # reported below
            errors.append(e)

    for trial in range(100):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=open_store, args=(tmp_path / f"{trial}.sqlite",
                                                            barrier)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_a_program_stored_between_the_look_and_the_claim_is_not_trained_again(tmp_path,
                                                                               monkeypatch):
    """The race of two sweeps sharing a store: sweep B finds no program, sweep A stores its
    program and lets go of its claim, B's claim succeeds: B must simulate A's program."""
    from npusim.sweep.distributed import _Run

    class Client:  # records what the sweep submits
        def __init__(self):
            self.keys: list[str] = []

        def nthreads(self):
            return {"w": 1}

        def submit(self, fn, *args, key, **kw):
            self.keys.append(key)
            return key

    path = tmp_path / "s.sqlite"
    with ResultsStore(path) as db, ResultsStore(path) as other:
        assert other.claim("q", "A")
        claim = db.claim

        def racing_claim(*args, **kw):  # A finishes just before B claims
            other.put_program("q", b"program", {"integer_acc": 0.5})
            other.release("A", "q")
            return claim(*args, **kw)

        monkeypatch.setattr(db, "claim", racing_claim)
        run = _Run(Client(), db, {"p": (GRID.points()[0], {})}, {"q": ["p"]}, False, None, 0,
                   60.0, 0.1, train_args=(), sim_args=(), row_args=(), total=1, row=None)
        run._start("q")
        assert [k.split("-")[0] for k in run.client.keys] == ["sim"]
        assert run.qmeta["q"] == {"integer_acc": 0.5} and db.claims() == {}
        run.bar.close()


def test_cluster_flags_are_checked_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="exactly one"):
        with cluster_client():
            pass
    with pytest.raises(ValueError, match="not found"):
        with cluster_client(scheduler_file=tmp_path / "missing.json"):
            pass
    with pytest.raises(ValueError, match="cannot reach the scheduler"):
        with cluster_client(scheduler="tcp://127.0.0.1:9", connect_timeout="1s"):
            pass
    args = ["sweep", "--model", "resnet8", "--data", "digits", "--db", str(tmp_path / "d.sqlite")]
    assert main([*args, "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert main([*args, "--scheduler-file", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--workers and --scheduler" in err[0] and "nope.json" in err[1]
    assert not (tmp_path / "d.sqlite").exists()


# --------------------------------------------------------------------------- the cluster

@pytest.mark.slow
def test_a_local_cluster_leaves_the_callers_environment_as_it_was(monkeypatch):
    """Dask's nannies write their pre-spawn variables (OMP_NUM_THREADS=1, ...) into the
    starting process's environment; `cluster_client` restores the caller's on exit, so a
    later subprocess does not run single-threaded."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    with cluster_client(workers=1) as c:
        assert c.submit(os.getenv, "OMP_NUM_THREADS").result() == "1"  # the worker's
    assert dict(os.environ) == before


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return tmp_path_factory.mktemp("serial-cache"), tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="module")
def client(caches):
    """2 single-threaded worker processes with their own model cache (workers inherit the
    environment when they start, so NPUSIM_CACHE is set around the start)."""
    old = os.environ.get("NPUSIM_CACHE")
    os.environ["NPUSIM_CACHE"] = str(caches[1])
    try:
        with cluster_client(workers=2) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("NPUSIM_CACHE", None)
        else:
            os.environ["NPUSIM_CACHE"] = old


@pytest.fixture(scope="module")
def serial(caches, tmp_path_factory):
    """The serial sweep's rows (trained in this process, in its own cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NPUSIM_CACHE", str(caches[0]))
    try:
        return sweep(GRID, store=tmp_path_factory.mktemp("serial") / "s.sqlite", **TINY)
    finally:
        mp.undo()


def fresh_worker_cache(caches) -> None:
    """Make the workers train again (they look their cache up at every training)."""
    shutil.rmtree(caches[1])
    caches[1].mkdir()


@pytest.mark.slow
def test_cluster_rows_equal_the_serial_rows(client, serial, caches, tmp_path):
    fresh_worker_cache(caches)
    store = tmp_path / "d.sqlite"
    seen = []
    df = sweep_distributed(GRID, client, store=store, on_point=seen.append, **TINY)
    assert len(df) == len(serial) == 8
    assert set(df["status"]) == {"ok", "rejected"}
    pd.testing.assert_frame_equal(rows(df), rows(serial))
    assert sorted(r["point_hash"] for r in seen) == sorted(df["point_hash"])
    with ResultsStore(store) as db:
        # the programs travelled back to the client and were stored with their meta
        blob, meta = db.program(df["quant_hash"].iloc[0])
        assert meta["integer_acc"] == df["integer_top1"].iloc[0]
        assert program_bytes(program_from_bytes(blob)) == blob
        assert db.claims() == {}
    # a rerun finds everything stored: nothing is submitted
    again = sweep_distributed(GRID, client, store=store, **TINY)
    pd.testing.assert_frame_equal(again, df)


@pytest.mark.slow
def test_cli_sweep_on_a_running_cluster(client, serial, tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    assert main(["sweep", "--model", "resnet8", "--data", "digits", "--width", "0.25",
                 "--epochs", "1", "--float-epochs", "1", "--images", "24", "--bits", "4/4,3/3",
                 "--acc-bits", "12,16", "--overflow", "wrap,saturate", "--no-progress",
                 "--db", str(db), "--scheduler", client.scheduler.address]) == 0
    assert "8 points" in capsys.readouterr().out
    with ResultsStore(db) as store:
        pd.testing.assert_frame_equal(rows(store.to_frame(serial["point_hash"])), rows(serial))


def _worker_running(client, prefix: str, sweep: threading.Thread, out: dict,
                    timeout: float = 300.0) -> str:
    """The address of a worker processing a task whose key starts with `prefix` while the
    `sweep` thread runs; fails at once, with the sweep's error (``out["error"]``), where the
    sweep ends first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for addr, keys in client.processing().items():
            if any(str(k).startswith(prefix) for k in keys):
                return addr
        if not sweep.is_alive():
            raise AssertionError(f"the sweep ended before a {prefix} task was seen: "
                                 f"{out.get('error', 'it finished')!r}")
        time.sleep(0.05)
    raise AssertionError(f"no {prefix} task started within {timeout} s; the scheduler: "
                         f"{client.processing()}")


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_loses_and_duplicates_nothing(client, serial, caches,
                                                                 tmp_path):
    fresh_worker_cache(caches)
    store = tmp_path / "d.sqlite"
    out: dict = {}

    def run():
        try:
            out["df"] = sweep_distributed(GRID, client, store=store, **TINY)
        except BaseException as e:  # reported below
            out["error"] = e

    th = threading.Thread(target=run)
    th.start()
    victim = _worker_running(client, "train-", th, out)
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    th.join(timeout=900)
    assert not th.is_alive() and "error" not in out, out.get("error")
    df = out["df"]
    pd.testing.assert_frame_equal(rows(df), rows(serial))
    with ResultsStore(store) as db:
        assert len(db) == len(serial) and df["point_hash"].is_unique
    assert victim not in client.nthreads()  # the worker really died


@pytest.mark.slow
def test_two_sweeps_sharing_a_store_train_each_setting_once(client, serial, caches, tmp_path,
                                                            caplog):
    fresh_worker_cache(caches)
    store = tmp_path / "shared.sqlite"
    # overlapping parts of GRID (same axes, so the same labels)
    grids = [Grid.parse(["bits=4/4,3/3"], ["precision.pe_acc_bits,precision.acc_bits=12,16",
                                           "precision.overflow=wrap"]),
             Grid.parse(["bits=3/3,4/4"], ["precision.pe_acc_bits,precision.acc_bits=16",
                                           "precision.overflow=wrap,saturate"])]
    out: dict = {}

    def run(i):
        from distributed import Client

        try:
            with Client(client.scheduler.address, set_as_default=False) as c:
                out[i] = sweep_distributed(grids[i], c, store=store, poll_s=0.2, **TINY)
        except BaseException as e:  # reported below
            out[f"error{i}"] = e

    caplog.set_level(logging.INFO, logger="npusim.sweep.distributed")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not any(t.is_alive() for t in threads)
    assert not [k for k in out if str(k).startswith("error")], out
    trained = [r.getMessage() for r in caplog.records if "training" in r.getMessage()]
    assert len(trained) == 2, trained  # W4A4 and W3A3, once each across both sweeps
    ref = serial.set_index("point_hash")
    for df in (out[0], out[1]):
        assert len(df) == 4
        pd.testing.assert_frame_equal(rows(df.set_index("point_hash")),
                                      rows(ref.loc[df["point_hash"]]), check_names=False,
                                      check_dtype=False)  # all ok here: ints, not floats
    with ResultsStore(store) as db:
        assert len(db) == len(set(out[0]["point_hash"]) | set(out[1]["point_hash"]))
        assert db.claims() == {}
