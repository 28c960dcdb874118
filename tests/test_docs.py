"""The documentation is executable: generated references equal their generator's output, every
`npusim` command in README.md and docs/*.md parses against the CLI, the commands run in order in
a scratch folder, and docs/tutorial.md's Python blocks run.

Blocks: fenced ```bash / ```console blocks hold commands (lines starting with ``npusim``, with
``\\`` continuations and ``# comments``; ``echo '...' > FILE`` lines write FILE); ```text blocks
are not run (placeholders such as PROGRAM). An HTML comment ``<!-- test: slow -->`` on the line
before a block puts it in the slow, MNIST-sized run only.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from npusim.cli.app import app
from npusim.hw import docgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    slow: bool


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with their language and slow mark."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i, m.group(1), []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        out.append(Block(path, start + 1, lang, "\n".join(body), "test: slow" in prev))
        i += 1
    return out


def commands(block: Block) -> list[list[str]]:
    """Shell lines of a bash/console block (continuations joined, comments dropped) as argv."""
    text = re.sub(r"\\\n\s*", " ", block.text)
    return [shlex.split(line.removeprefix("$ "), comments=True) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _shell_blocks(slow: bool | None = None) -> list[Block]:
    return [b for p in DOCS for b in blocks(p) if b.lang in ("bash", "console", "sh")
            and (slow is None or b.slow == slow)]


def _npusim_commands(slow: bool | None = None) -> list[tuple[str, list[str]]]:
    return [(f"{b.path.name}:{b.line}", argv[1:]) for b in _shell_blocks(slow)
            for argv in commands(b) if argv and argv[0] == "npusim"]


# ---------------------------------------------------------------------- fast checks

@pytest.mark.parametrize("name", sorted(docgen.GENERATED))
def test_generated_docs_are_current(name):
    """Rerun `python -m npusim.hw.docgen docs` when this fails (a schema or op changed)."""
    committed = (ROOT / "docs" / name).read_text(encoding="utf-8")
    assert committed == docgen.GENERATED[name](), \
        f"docs/{name} is stale: run `python -m npusim.hw.docgen docs`"


def test_docs_show_commands():
    assert len(_npusim_commands(slow=False)) >= 6
    assert _npusim_commands(slow=True), "the MNIST flow is part of the README"


@pytest.mark.parametrize("where, argv", _npusim_commands(), ids=lambda v: v
                         if isinstance(v, str) else None)
def test_every_documented_command_parses(where, argv):
    """Each command names a real subcommand, real options and values of the right type."""
    group = typer.main.get_command(app)
    args = list(argv)
    while args and args[0].startswith("--"):  # global options (--debug)
        args.pop(0)
    assert args, where
    cmd = group.get_command(None, args[0])  # type: ignore[arg-type]
    assert cmd is not None, f"{where}: unknown command {args[0]!r}"
    ctx = cmd.make_context(args[0], args[1:], resilient_parsing=False)
    assert ctx.params is not None


def test_one_epoch_rewrites_only_epoch_values():
    assert _one_epoch(["train", "--epochs", "15", "--wbits", "4"]) == ["train", "--epochs", "1",
                                                                      "--wbits", "4"]


def test_block_parser(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("a\n<!-- test: slow -->\n```bash\nnpusim train \\\n  --epochs 2  # c\n"
                  "# only a comment\n```\n```text\nnpusim simulate PROGRAM\n```\n")
    bs = blocks(md)
    assert [(b.lang, b.slow) for b in bs] == [("bash", True), ("text", False)]
    assert commands(bs[0]) == [["npusim", "train", "--epochs", "2"]]


# ------------------------------------------------------------------ the flows, run

def _one_epoch(argv: list[str]) -> list[str]:
    """`argv` with every `--epochs N` set to 1 (the commands as written, at a test's budget)."""
    return [("1" if i and argv[i - 1] == "--epochs" else a) for i, a in enumerate(argv)]


def _run_blocks(chosen: list[Block], cwd: Path, monkeypatch, one_epoch: bool = False) -> None:
    (cwd / "reports").mkdir(exist_ok=True)  # the README names the committed example NPU file
    shutil.copy(ROOT / "reports" / "per_layer_npu.toml", cwd / "reports" / "per_layer_npu.toml")
    monkeypatch.chdir(cwd)
    runner = CliRunner()
    for block in chosen:
        for argv in commands(block):
            if one_epoch:
                argv = _one_epoch(argv)
            where = f"{block.path.name}:{block.line}: {shlex.join(argv)}"
            if argv[0] == "echo" and len(argv) == 4 and argv[2] == ">":
                Path(argv[3]).write_text(argv[1] + "\n")
                continue
            if argv[0] == "make":
                continue  # the quick start's own targets; `make test` is this suite
            assert argv[0] == "npusim", f"{where}: only npusim, echo and make lines can run"
            res = runner.invoke(app, argv[1:])
            assert res.exit_code == 0, f"{where}\n{res.output}\n{res.exception!r}"


@pytest.mark.slow
def test_readme_first_result_runs(tmp_path, monkeypatch):
    """README's digits flow and every fast docs block, in order, in one scratch folder."""
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    _run_blocks(_shell_blocks(slow=False), tmp_path, monkeypatch)
    assert (tmp_path / "runs" / "w4a4.safetensors").is_file()


@pytest.mark.slow
def test_readme_mnist_flow_runs(tmp_path, monkeypatch):
    """README's MNIST block, every command as written except one epoch per training (the
    README's 15 + 3 epochs take about 15 minutes on 2 cores: too long for every CI run)."""
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    _run_blocks(_shell_blocks(slow=True), tmp_path, monkeypatch, one_epoch=True)
    assert (tmp_path / "runs" / "w4a4_mnist.safetensors").is_file()


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    """docs/tutorial.md's Python blocks, executed in order in one namespace."""
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    py = [b for b in blocks(ROOT / "docs" / "tutorial.md") if b.lang == "python"]
    assert len(py) >= 4
    for b in py:
        exec(compile(b.text, f"tutorial.md:{b.line}", "exec"), namespace)  # noqa: S102
