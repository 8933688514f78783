"""The docs run: every Python block and every console transcript in README.md and docs/*.md.

How a fenced block is treated depends on its language (the word after the opening fence):

``python`` (or ``py``)
    Written to ``block.py`` in an empty temporary directory and run there as
    ``python block.py`` in a fresh process, so blocks cannot affect each other or this test
    process; it must exit with status 0 within a minute. Every block is a whole program a reader
    can paste into a file: imports and data included, the ``if __name__ == "__main__":`` guard
    where a process pool needs it, quick (small inputs, no network).
``console``
    A terminal transcript, checked. Lines starting with ``$ `` are commands; lines starting with
    ``> `` right after one continue it (a here-document, as a shell shows it); every other line is
    output. The commands of one block run in order in one ``bash`` inside an empty temporary
    directory (so a command may use a file an earlier one wrote, and ``echo $?`` works), with
    stdout and stderr merged. Each command's output must equal the lines shown, where a line
    that is ``...`` stands for any number of lines and ``...`` inside a line for any text. Write
    ``...`` where output depends on the machine (memory, timings, paths).
any other language (``text``, ``toml``, ``sh``, none)
    Not run. Use ``text`` for output that cannot be made deterministic, and ``toml`` or ``text``
    for a file's content.

Both kinds run with the environment variables that steer stepdown (``STEPDOWN_*``, ``CI``,
Kaggle's and Ray's) removed, so a transcript shows what a plain Linux machine prints; a
transcript that needs one sets it on its command line, as a reader would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 60
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")
STEERING = re.compile(r"^(STEPDOWN_|KAGGLE_|COLAB_|RAY_)|^(CI|GITHUB_ACTIONS|container)$")
MARK = "@@stepdown-doc-command-done@@"


@dataclass(frozen=True)
class Block:
    where: str  # "docs/file.md:LINE", LINE being the opening fence's
    lang: str
    text: str


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, dedented to their fence's indent."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(
            rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[j]
        ):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        where = f"{path.relative_to(ROOT)}:{i + 1}"
        found.append(Block(where, opening["lang"].lower(), "\n".join(body) + "\n"))
        i = j + 1
    return found


ALL_BLOCKS = [block for path in DOC_FILES for block in blocks(path)]
PYTHON = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]
CONSOLE = [b for b in ALL_BLOCKS if b.lang == "console"]


def plain_environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not STEERING.search(name)}
    # The venv's `stepdown` script first; output in the order a terminal would show it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    return env


@pytest.mark.timeout(TIMEOUT + 10)
@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.where)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.text)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=plain_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, (
        f"{block.where} exited with {done.returncode}\n"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    )


@dataclass
class Command:
    line: str  # the command as shown, `$ ` removed, continuation lines joined by newlines
    expected: list[str]


def commands(block: Block) -> list[Command]:
    found: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append(Command(line[2:], []))
        elif line.startswith("> ") and found and not found[-1].expected:
            found[-1].line += "\n" + line[2:]
        elif found:
            found[-1].expected.append(line)
        elif line.strip():
            raise AssertionError(f"{block.where}: output before the first `$ ` command: {line!r}")
    assert found, f"{block.where}: a console block without a `$ ` command"
    return found


def line_pattern(line: str) -> str:
    return ".*".join(re.escape(part) for part in line.rstrip().split("..."))


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` equals ``actual``; a ``...`` line stands for any lines, ``...`` for any text."""
    parts = [
        r"(?:.*\n)*?" if line.strip() == "..." else line_pattern(line) + r"\n" for line in expected
    ]
    text = "".join(line.rstrip() + "\n" for line in actual)
    return re.fullmatch("".join(parts), text) is not None


def trimmed(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


@pytest.mark.timeout(TIMEOUT + 10)
@pytest.mark.parametrize("block", CONSOLE, ids=lambda b: b.where)
def test_console_transcript(block: Block, tmp_path: Path) -> None:
    steps = commands(block)
    # Print a mark after each command, keeping its exit status for a following `echo $?`.
    script = "".join(f"{step.line}\n__status=$?; echo {MARK}; (exit $__status)\n" for step in steps)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=plain_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    outputs = done.stdout.split(MARK + "\n")
    assert len(outputs) == len(steps) + 1, (
        f"{block.where}: the transcript stopped early\n{done.stdout}"
    )
    for step, output in zip(steps, outputs[:-1], strict=True):
        actual = trimmed(output.splitlines())
        expected = trimmed(step.expected)
        assert matches(expected, actual), (
            f"{block.where}: `$ {step.line}` printed\n"
            + "\n".join(actual)
            + "\n--- the doc shows\n"
            + "\n".join(expected)
        )


def test_collector_finds_blocks() -> None:
    """A broken fence pattern would make every test above vanish silently."""
    assert len(PYTHON) >= 10
    assert CONSOLE
    assert {"README.md", "docs/index.md"} <= {b.where.split(":")[0] for b in PYTHON}


def test_transcript_matching() -> None:
    assert matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert matches(["took ... s"], ["took 1.3 s"])
    assert not matches(["a", "z"], ["a", "b", "z"])
    assert not matches(["a"], ["a", "b"])
    assert not matches(["a", "...", "z"], ["a", "bz"])
    assert not matches(["took ... s"], ["took 1", "s"])
    doc = Block("x.md:1", "console", "$ cat > f <<EOF\n> hi\n> EOF\n$ cat f\nhi\n")
    assert [(c.line, c.expected) for c in commands(doc)] == [
        ("cat > f <<EOF\nhi\nEOF", []),
        ("cat f", ["hi"]),
    ]
