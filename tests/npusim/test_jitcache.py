"""numba's cache directory is named by the content of every file with jitted code."""

import re
import shutil
from pathlib import Path

import numba

import npusim
from npusim import jitcache

_JITTED = re.compile(r"numba\.njit|register_jitable|@intrinsic|numba\.vectorize")


def test_every_file_with_jitted_code_is_in_the_digest():
    root = Path(npusim.__file__).resolve().parent
    found = {str(p.relative_to(root)) for p in root.rglob("*.py")
             if p.name != "jitcache.py" and _JITTED.search(p.read_text())}
    assert found == set(jitcache.JIT_SOURCES)


def test_an_edit_to_any_jitted_file_names_another_directory(monkeypatch, tmp_path):
    """One byte changed in any of the files (a rule `kernels` inlines from `arith`, say)
    gives another digest, as does forcing other tiles (``NPUSIM_TILES``); the unchanged tree
    gives the same one."""
    monkeypatch.delenv("NPUSIM_TILES", raising=False)
    root = Path(npusim.__file__).resolve().parent
    for name in jitcache.JIT_SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, tmp_path / name)
    monkeypatch.setattr(jitcache, "_PACKAGE", tmp_path)
    base = jitcache.digest()
    assert base == jitcache.digest()
    for name in jitcache.JIT_SOURCES:
        text = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(text + b"\n")
        assert jitcache.digest() != base, name
        (tmp_path / name).write_bytes(text)
    assert jitcache.digest() == base
    for tiles in ("avx2", "none"):  # the forced tiles compile into their own directory
        monkeypatch.setenv("NPUSIM_TILES", tiles)
        assert jitcache.digest() != base, tiles
    monkeypatch.setenv("NPUSIM_TILES", "auto")
    assert jitcache.digest() == base


def test_configure_names_the_directory_once(monkeypatch, tmp_path):
    """Under ``$NPUSIM_CACHE/numba`` by default, under ``$NUMBA_CACHE_DIR`` when set; a child
    process inheriting the configured directory keeps it; numba's live config follows."""
    name = f"npusim-{jitcache.digest()}"
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    path = jitcache.configure()
    assert path == str(tmp_path / "c" / "numba" / name)
    assert numba.config.CACHE_DIR == path
    assert jitcache.configure() == path  # inherited: not nested again
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert jitcache.configure() == str(tmp_path / "mine" / name)


def test_importing_npusim_configured_numba():
    assert Path(numba.config.CACHE_DIR).name == f"npusim-{jitcache.digest()}"
