"""The results store: one SQLite row per finished sweep point, keyed by the point's hash.

Each point is committed in its own transaction the moment it finishes (WAL journal,
``synchronous=FULL``), so a sweep killed at any instant (Ctrl-C, ``kill -9``, power loss)
keeps every point it finished and none half-written; rerunning it skips those points. A
point's row is stored as JSON (the tidy columns of `npusim.sweep.run`) next to its per-layer
table, so reports can be regenerated from the store alone. Standard library only.

For distributed sweeps (`npusim.sweep.distributed`) the store also holds the exported
program of every trained quantization setting (``programs``, keyed by its QAT config hash)
and ``claims``: a sweep claims a setting before it trains it and refreshes the claim while
it runs, so several sweeps sharing one store train each setting once; a claim whose owner
stopped refreshing it goes stale and may be taken over.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from npusim.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["ResultsStore", "StoreError"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    point_hash  TEXT PRIMARY KEY,
    finished_at TEXT NOT NULL,
    row_json    TEXT NOT NULL,
    layers_json TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    quant_hash  TEXT PRIMARY KEY,
    stored_at   TEXT NOT NULL,
    program     BLOB NOT NULL,
    meta_json   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    quant_hash  TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    heartbeat   REAL NOT NULL
);
"""


_COLUMNS = {"points": ("point_hash", "finished_at", "row_json", "layers_json"),
            "meta": ("key", "value"), "programs": ("quant_hash", "stored_at", "program", "meta_json"),
            "claims": ("quant_hash", "owner", "heartbeat")}


class StoreError(UserError):
    """A results database that cannot be opened or is not one of ours (one line)."""


def _jsonable(v: Any) -> Any:
    """NumPy / pandas scalars -> plain JSON values; NaN and NA -> None."""
    if v is None or v is pd.NA:
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def _dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=False, allow_nan=False, separators=(",", ":"))


_TIMEOUT_S = 60.0  # how long a connection waits for another one's lock


def _set_wal(con: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock: where
    two processes (or threads) create one store at once, SQLite answers "database is locked"
    at once instead of waiting its busy timeout (8% of 300 paired creations here)."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class ResultsStore:
    """A SQLite file of sweep points: ``put`` commits one point, ``to_frame`` reads them all."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        """Open (or create) a store; `readonly` opens an existing file with SQLite's
        ``mode=ro`` URI: no journal, pragma or schema writes, so a read-only file works."""
        self.path = Path(path)
        if readonly:
            self._con = self._open_readonly()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(self.path, timeout=_TIMEOUT_S, isolation_level=None)
            _set_wal(self._con)
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(_SCHEMA)
            self._con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            ver = self._con.execute(
                "SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
            for table, cols in _COLUMNS.items():  # another program's tables of the same name
                self._con.execute(f"SELECT {', '.join(cols)} FROM {table} LIMIT 0")
            check = self._con.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":  # a damaged page is refused before any work starts
                raise sqlite3.DatabaseError(f"damaged: {check}")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a results database ({e})") from None
        if str(ver) != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path}: results schema version {str(ver)[:40]!r}, this npusim "
                             f"reads {SCHEMA_VERSION}")

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such results store")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        # No -wal journal beside the file: no connection has it open (the last one to close
        # removes it), so it is opened immutable and nothing at all is written (no -shm
        # index). With a -wal (a sweep running, or killed), a plain read-only open reads the
        # points in it; where its index cannot be created (read-only directory), immutable.
        live = self.path.with_name(self.path.name + "-wal").exists()
        queries = (uri, uri + "&immutable=1") if live else (uri + "&immutable=1",)
        for query in queries:
            con = None
            try:
                con = sqlite3.connect(query, uri=True, timeout=_TIMEOUT_S, isolation_level=None)
                row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            except sqlite3.OperationalError as e:
                if con is not None:
                    con.close()
                if "unable to open" in str(e) and "immutable" not in query:
                    log.warning("%s: its -wal journal cannot be read here (read-only "
                                "directory); the points only in it are left out", self.path)
                    continue
                raise StoreError(f"{self.path}: not a results database ({e})") from None
            except sqlite3.DatabaseError as e:
                con.close()
                raise StoreError(f"{self.path}: not a results database ({e})") from None
            if row is None or str(row[0]) != str(SCHEMA_VERSION):
                con.close()
                raise StoreError(f"{self.path}: results schema version "
                                 f"{row[0] if row else 'missing'}, this npusim reads "
                                 f"{SCHEMA_VERSION}")
            return con
        raise StoreError(f"{self.path}: cannot be opened")  # pragma: no cover

    # ------------------------------------------------------------------ writing
    def put(self, point_hash: str, row: dict[str, Any],
            layers: pd.DataFrame | None = None) -> bool:
        """Commit one finished point (row and per-layer table together); False if it was
        already stored (the first result is kept: nothing is ever duplicated)."""
        row = {"point_hash": point_hash, **row}
        lay = None if layers is None else _dumps(layers.to_dict(orient="records"))
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._con:  # BEGIN ... COMMIT (or ROLLBACK on error)
            cur = self._con.execute(
                "INSERT INTO points (point_hash, finished_at, row_json, layers_json) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(point_hash) DO NOTHING",
                (point_hash, now, _dumps({**row, "finished_at": now}), lay))
        return cur.rowcount == 1

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under `key` (e.g. the command and settings of the sweep)."""
        if key == "schema_version":
            raise StoreError("schema_version is managed by the store")
        with self._con:
            self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key=?", (key,))
        if not rows or key == "schema_version":
            return default
        try:
            return json.loads(rows[0][0])
        except (TypeError, ValueError, RecursionError):
            raise StoreError(f"{self.path}: meta {key!r}: stored value is not JSON") from None

    # ------------------------------------------------- trained programs and claims
    def put_program(self, quant_hash: str, program: bytes, meta: dict[str, Any]) -> bool:
        """Store the exported program (IntegerProgram file bytes) of a trained quantization
        setting with its training meta; False if one was already stored (it is kept)."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._con:
            cur = self._con.execute(
                "INSERT INTO programs VALUES (?, ?, ?, ?) ON CONFLICT(quant_hash) DO NOTHING",
                (quant_hash, now, sqlite3.Binary(program), _dumps(meta)))
        return cur.rowcount == 1

    def program(self, quant_hash: str) -> tuple[bytes, dict[str, Any]] | None:
        """(program bytes, training meta) of a stored setting, or None."""
        row = self._con.execute("SELECT program, meta_json FROM programs WHERE quant_hash=?",
                                (quant_hash,)).fetchone()
        return None if row is None else (bytes(row[0]), json.loads(row[1]))

    def claim(self, quant_hash: str, owner: str, stale_s: float = 120.0) -> bool:
        """Claim the training of `quant_hash` for `owner`: True if it is now (or was already)
        ours, False while another owner refreshed its claim within `stale_s` seconds."""
        now = time.time()
        self._con.execute("BEGIN IMMEDIATE")  # one claimer at a time, across processes
        try:
            row = self._con.execute("SELECT owner, heartbeat FROM claims WHERE quant_hash=?",
                                    (quant_hash,)).fetchone()
            ours = row is None or row[0] == owner or now - row[1] > stale_s
            if ours:
                self._con.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                                  (quant_hash, owner, now))
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return ours

    def heartbeat(self, owner: str) -> None:
        """Refresh every claim of `owner` (a live sweep does this every few seconds)."""
        with self._con:
            self._con.execute("UPDATE claims SET heartbeat=? WHERE owner=?", (time.time(), owner))

    def release(self, owner: str, quant_hash: str | None = None) -> None:
        """Drop one claim of `owner` (or all of them)."""
        with self._con:
            if quant_hash is None:
                self._con.execute("DELETE FROM claims WHERE owner=?", (owner,))
            else:
                self._con.execute("DELETE FROM claims WHERE owner=? AND quant_hash=?",
                                  (owner, quant_hash))

    def claims(self) -> dict[str, str]:
        """Current claims: quant hash -> owner."""
        return dict(self._con.execute("SELECT quant_hash, owner FROM claims").fetchall())

    # ------------------------------------------------------------------ reading
    def done(self) -> set[str]:
        """Hashes of every stored point."""
        return {r[0] for r in self._con.execute("SELECT point_hash FROM points")}

    def __contains__(self, point_hash: str) -> bool:
        return self._con.execute("SELECT 1 FROM points WHERE point_hash=?",
                                 (point_hash,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a query; a damaged file is a one-line StoreError."""
        try:
            return self._con.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot read the results database ({e})") from None

    def _json(self, text: Any, what: str, kind: type) -> Any:
        """A stored JSON value of type `kind`; anything else is a one-line StoreError."""
        try:
            value = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            value = None
        if not isinstance(value, kind):
            raise StoreError(f"{self.path}: {what}: stored value is not a JSON "
                             f"{'object' if kind is dict else 'list'}")
        return value

    def to_frame(self, hashes: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per point, in the order they finished (or in the order of `hashes`)."""
        rows = self._read("SELECT point_hash, row_json FROM points ORDER BY rowid")
        recs = {h: self._json(j, f"point {h!r}", dict) for h, j in rows}
        order = list(recs) if hashes is None else [h for h in hashes if h in recs]
        return pd.DataFrame([recs[h] for h in order])

    def layers(self, point_hash: str) -> pd.DataFrame:
        """The per-layer table stored with one point (empty if it has none)."""
        rows = self._read("SELECT layers_json FROM points WHERE point_hash=?", (point_hash,))
        if not rows:
            raise KeyError(f"no point {point_hash!r} in {self.path}")
        layers = self._json(rows[0][0], f"point {point_hash!r} layers", list) if rows[0][0] else []
        if not all(isinstance(r, dict) for r in layers):
            raise StoreError(f"{self.path}: point {point_hash!r} layers: expected a list of objects")
        return pd.DataFrame(layers)

    def layers_frame(self, hashes: Iterable[str] | None = None) -> pd.DataFrame:
        """Per-layer tables of many points, stacked, with a ``point_hash`` column."""
        hs = list(hashes) if hashes is not None else list(self.to_frame().get("point_hash", []))
        parts = [self.layers(h).assign(point_hash=h) for h in hs]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    # ------------------------------------------------------------------ exporting
    def export_csv(self, path: str | Path, hashes: Iterable[str] | None = None) -> Path:
        """Write `to_frame()` as CSV (atomically)."""
        from npusim.io import write_csv

        write_csv(self.to_frame(hashes), path)
        return Path(path)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
