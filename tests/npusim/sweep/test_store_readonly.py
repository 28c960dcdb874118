"""`plot` / `report` read a store without writing it: a read-only file or directory works."""

import os
import sqlite3
import stat

import pytest

from npusim.cli.app import main
from npusim.sweep.store import ResultsStore, StoreError
from tests.npusim.report.test_plots import _store


@pytest.fixture
def frozen(tmp_path):
    """A closed store in a directory, both made read-only; restored for cleanup."""
    with _store(tmp_path):
        pass
    db = tmp_path / "r.sqlite"
    os.chmod(db, 0o444)
    os.chmod(tmp_path, 0o555)
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    yield db, before
    os.chmod(tmp_path, 0o755)
    os.chmod(db, 0o644)


def _unchanged(db, before):
    assert (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(db.parent))) == before


def test_readonly_open_never_writes_even_as_root(frozen):
    db, before = frozen
    with ResultsStore(db, readonly=True) as st:
        assert len(st.to_frame()) > 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # mode=ro, even for root
            st.put("x", {"status": "ok"})
    _unchanged(db, before)
    assert not stat.S_IMODE(db.stat().st_mode) & 0o222


def test_plot_on_a_readonly_store(frozen, tmp_path_factory, capsys):
    db, before = frozen
    out = tmp_path_factory.mktemp("out") / "p.png"
    assert main(["plot", str(db), "--x", "acc_bits", "--out", str(out)]) == 0
    assert out.is_file()
    _unchanged(db, before)


@pytest.mark.slow
def test_report_on_a_readonly_store(frozen, tmp_path_factory):
    db, before = frozen
    out = tmp_path_factory.mktemp("rep")
    assert main(["report", str(db), "--out", str(out)]) == 0
    assert (out / "README.md").is_file()
    _unchanged(db, before)


def test_missing_or_foreign_store_is_exit_2(tmp_path, capsys):
    for cmd in (["plot", str(tmp_path / "none.sqlite"), "--x", "acc_bits",
                 "--out", str(tmp_path / "p.png")], ["report", str(tmp_path / "none.sqlite")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "none.sqlite" in err[0] and "not found" in err[0]
    with pytest.raises(StoreError, match="no such results store"):
        ResultsStore(tmp_path / "none.sqlite", readonly=True)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="not a results database"):
        ResultsStore(other, readonly=True)
    assert not (tmp_path / "none.sqlite").exists()


def test_readonly_open_sees_the_points_of_a_running_sweep(tmp_path):
    with _store(tmp_path) as writer:  # open: its points may still be in the -wal journal
        assert (tmp_path / "r.sqlite-wal").exists()
        with ResultsStore(tmp_path / "r.sqlite", readonly=True) as reader:
            assert len(reader.to_frame()) == len(writer.to_frame()) > 0
