"""numba's on-disk cache, in a directory named by the content of every file with jitted code.

numba keys a cached kernel on its own file's time stamp only: a kernel that inlines a rule
from another file (`npusim.sim.kernels` from `npusim.ir.arith`, `npusim.sim.int8_tiles` from
`npusim.sim.kernels`) kept its old machine code after an edit to that file alone, and ran it
silently. Here every such file's bytes go into one digest naming the directory: an edit to
any of them compiles everything afresh, an unchanged tree finds its kernels compiled. Set up
by ``import npusim``, before any kernel module is imported."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

#: the modules that define jitted code (numba njit, register_jitable, intrinsic), package paths
JIT_SOURCES = ("ir/arith.py", "sim/kernels.py", "sim/int8_tiles.py", "sim/lanes16.py",
               "sim/lanes32.py")
_PACKAGE = Path(__file__).resolve().parent


def digest() -> str:
    """16 hex digits of the SHA-256 of `JIT_SOURCES`' names and bytes and of
    ``$NPUSIM_TILES`` (which tiles `npusim.sim.int8_tiles` compiles)."""
    h = hashlib.sha256(b"NPUSIM_TILES=" + os.environ.get("NPUSIM_TILES", "auto").encode())
    for name in JIT_SOURCES:
        h.update(name.encode() + b"\0" + (_PACKAGE / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def configure() -> str:
    """Point numba's cache at ``<base>/npusim-<digest>`` and return it; `base` is
    ``$NUMBA_CACHE_DIR`` if set (a directory already so named is kept: a child process
    inherits it), else ``$NPUSIM_CACHE/numba`` or ``~/.cache/npusim/numba``."""
    name = f"npusim-{digest()}"
    base = os.environ.get("NUMBA_CACHE_DIR") or str(
        Path(os.environ.get("NPUSIM_CACHE") or Path.home() / ".cache" / "npusim") / "numba")
    path = base if Path(base).name == name else str(Path(base) / name)
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:  # imported before npusim: its config already read the variable
        sys.modules["numba"].config.CACHE_DIR = path
    return path
