"""The layering contract (pyproject.toml [tool.importlinter]): cli > report > sweep > cost | quantize
> sim > hw > ir > data | io > errors, models a leaf, quantize on the simulator's public names only,
and no import cycles inside npusim. Runs import-linter over the source tree (no import of it)."""

import logging
import sys
from pathlib import Path

from importlinter import cli as importlinter_cli

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ("layers", "models-leaf", "quantize-uses", "acyclic")


def _lint(monkeypatch, capsys, config: Path, contracts=()) -> tuple[int, str]:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports prepends the cwd
    # import-linter configures its logging by dictConfig, which disables every logger that
    # exists already (npusim's too): later tests in this process would capture no records
    loggers = [lg for lg in logging.root.manager.loggerDict.values()
               if isinstance(lg, logging.Logger)]
    disabled = [lg.disabled for lg in loggers]
    try:
        rc = importlinter_cli.lint_imports(config_filename=str(config),
                                           limit_to_contracts=contracts, no_cache=True,
                                           no_logo=True)
    finally:
        for lg, was in zip(loggers, disabled):
            lg.disabled = was
    return rc, capsys.readouterr().out


def test_import_contracts_are_kept(monkeypatch, capsys):
    log = logging.getLogger("npusim.sim.accumulate")
    rc, out = _lint(monkeypatch, capsys, ROOT / "pyproject.toml", CONTRACTS)
    assert rc == 0, out
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken" in out, out
    assert not log.disabled  # the simulator's records still reach a later test's caplog


def test_an_upward_import_breaks_the_layers_contract(monkeypatch, capsys, tmp_path):
    """The contract bites: with npusim.ir listed above npusim.sim, sim's imports of ir break it."""
    text = (ROOT / "pyproject.toml").read_text()
    swapped = text.replace('    "npusim.sim",\n', '    "npusim.ir",\n    "npusim.sim",\n', 1)
    swapped = swapped.replace('    "npusim.hw",\n    "npusim.ir",\n', '    "npusim.hw",\n', 1)
    assert swapped != text
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(swapped)
    rc, out = _lint(monkeypatch, capsys, cfg, ("layers",))
    assert rc != 0 and "npusim.sim" in out and "BROKEN" in out, out
