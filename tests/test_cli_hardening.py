"""``stepdown run`` against hostile files: pipes read once, an output that is the input or not
ours, torn output lines, two runs on one output, devices, kernel files, huge or deep lines,
modules that exit at import, and an output that stops taking writes. Each case is real: real
pipes and FIFOs, links, devices, concurrent processes, rlimits."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

JOB = textwrap.dedent(
    """
    import os, time, uuid

    CALLS = os.environ.get("CALLS_DIR")
    GATE = os.environ.get("GATE")

    def score(item):
        if CALLS:
            open(os.path.join(CALLS, f"{item['n']}-{uuid.uuid4().hex}"), "x").close()
        while GATE and item["n"] > 0 and not os.path.exists(GATE):
            time.sleep(0.02)
        return {"double": item["n"] * 2}

    def huge(item):
        return "x" * (64 * 1024 * 1024)
    """
)

MiB = 1024 * 1024


def write_items(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(n)))


def items_text(n: int) -> str:
    return "".join(json.dumps({"n": i}) + "\n" for i in range(n))


def record(index: int) -> str:
    return json.dumps({"index": index, "result": {"double": 2 * index}}) + "\n"


def read_output(text: str) -> dict[int, object]:
    found: dict[int, object] = {}
    for line in text.splitlines():
        entry = json.loads(line)
        assert entry["index"] not in found, f"index {entry['index']} written twice"
        found[entry["index"]] = entry.get("result", entry.get("error"))
    return found


def doubled(n: int) -> dict[int, object]:
    return {i: {"double": 2 * i} for i in range(n)}


def calls(folder: Path) -> dict[int, int]:
    ran: dict[int, int] = {}
    for name in os.listdir(folder):
        index = int(name.split("-")[0])
        ran[index] = ran.get(index, 0) + 1
    return ran


def limit_data(megabytes: int) -> Callable[[], None]:
    """A child whose heap stops at ``megabytes``: reading without bound raises, not OOM-kills."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (megabytes * MiB, megabytes * MiB))

    return apply


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def stepdown(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    **popen: object,
) -> subprocess.CompletedProcess[str]:
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "stepdown", "run", *args],
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": _path(cwd), **(env or {})},
        check=False,
        **popen,
    )


def _path(folder: Path) -> str:
    """``folder`` (the task modules) first on the import path, the rest kept."""
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def one_line(out: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit 2, one line on stderr naming every part, no traceback."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    for part in parts:
        assert part in out.stderr, out.stderr


# 1. An input that can be read only once.


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["-", "/dev/stdin", "/dev/fd"])
def test_a_piped_input_is_read_once(job: Path, how: str) -> None:
    if how == "/dev/fd":  # what `-i <(cat items.jsonl)` hands over
        read, write = os.pipe()
        writer = threading.Thread(target=lambda: _feed(write, items_text(12)))
        writer.start()
        try:
            out = stepdown(
                job, "job:score", "-i", f"/dev/fd/{read}", "-o", "out.jsonl", pass_fds=(read,)
            )
        finally:
            os.close(read)
            writer.join()
    else:
        out = stepdown(job, "job:score", "-i", how, "-o", "out.jsonl", input=items_text(12))
    assert out.returncode == 0, out.stderr
    assert read_output((job / "out.jsonl").read_text()) == doubled(12)
    assert "12 tasks" in out.stderr


def _feed(fd: int, text: str) -> None:
    with open(fd, "w") as handle:
        handle.write(text)


@pytest.mark.timeout(60)
def test_a_fifo_input_is_read_once(job: Path) -> None:
    fifo = job / "items.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(items_text(7)))
    writer.start()
    try:
        out = stepdown(job, "job:score", "-i", str(fifo), "-o", "out.jsonl", timeout=40)
    finally:
        # A writer still waiting for a reader (the run failed first) is let go.
        with open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb") as drain:
            writer.join(timeout=10)
            drain.read()
    assert out.returncode == 0, out.stderr
    assert read_output((job / "out.jsonl").read_text()) == doubled(7)


def test_output_to_stdout(job: Path) -> None:
    write_items(job / "items.jsonl", 9)
    out = stepdown(job, "job:score", "-i", "items.jsonl", "-o", "-")
    assert out.returncode == 0, out.stderr
    assert read_output(out.stdout) == doubled(9)
    assert not (job / "-").exists()


def test_resume_to_stdout_is_refused(job: Path) -> None:
    write_items(job / "items.jsonl", 3)
    out = stepdown(job, "job:score", "-i", "items.jsonl", "-o", "-", "--resume")
    one_line(out, "--resume", "not -")
    assert out.stdout == ""
    assert not (job / "-").exists()


# 2. An output that is the input, or is not a run's output: refused, left as it was.


@pytest.mark.parametrize(
    ("name", "resume"),
    [(name, resume) for name in ("same path", "symlink", "hard link") for resume in (True, False)]
    + [("stdout", False)],  # -o - with --resume is refused for its own reason
)
def test_an_output_that_is_the_input_is_refused(job: Path, name: str, resume: bool) -> None:
    items = job / "items.jsonl"
    write_items(items, 5)
    before = items.read_bytes()
    target = {"same path": "items.jsonl", "symlink": "link.jsonl", "hard link": "hard.jsonl"}
    if name == "symlink":
        (job / "link.jsonl").symlink_to(items)
    elif name == "hard link":
        os.link(items, job / "hard.jsonl")
    flag = ["--resume"] if resume else []
    if name == "stdout":
        with items.open("a") as appended:  # `stepdown run ... -o - >> items.jsonl`
            out = stepdown(job, "job:score", "-i", "items.jsonl", "-o", "-", stdout=appended)
    else:
        out = stepdown(job, "job:score", "-i", "items.jsonl", "-o", target[name], *flag)
    one_line(out, "is the input file")
    assert items.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        items_text(4),  # a copy of the input
        '{"index": 0, "text": "an item shaped like a record"}\n',
        "notes about the run\nsecond line\n",
        record(0) + "# a comment\n" + record(1),
        "just one line without a newline",
    ],
)
def test_resume_refuses_a_file_that_is_not_a_runs_output(job: Path, content: str) -> None:
    write_items(job / "items.jsonl", 4)
    output = job / "out.jsonl"
    output.write_text(content)
    out = stepdown(job, "job:score", "-i", "items.jsonl", "-o", "out.jsonl", "--resume")
    one_line(out, "out.jsonl:", "not the output of a run")
    assert output.read_text() == content


# 3. Torn lines: a torn last line is cut; a torn middle line goes and only its item runs again.


def test_a_torn_middle_line_keeps_every_good_line(job: Path) -> None:
    write_items(job / "items.jsonl", 10)
    output = job / "out.jsonl"
    deep = '{"index": 6, "result": ' + "[" * 100_000 + "\n"  # read back: RecursionError
    good = [record(i) for i in (0, 1, 3, 4, 5, 7)]
    torn = '{"index": 2, "res\n'
    repeated = record(1)
    killed = '{"index": 8, "resu'  # the last write, cut by a kill
    lines = [*good[:2], torn, *good[2:4], repeated, good[4], deep, good[5], killed]
    output.write_text("".join(lines))
    (job / "calls").mkdir()
    out = stepdown(
        job,
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "out.jsonl",
        "--resume",
        env={"CALLS_DIR": str(job / "calls")},
    )
    assert out.returncode == 0, out.stderr
    text = output.read_text()
    assert text.startswith("".join(good))  # kept as they were, in their order
    assert read_output(text) == doubled(10)
    assert calls(job / "calls") == {2: 1, 6: 1, 8: 1, 9: 1}
    assert "removed line 3 (cut short), 6 (index 1 again), 8 (cut short)" in out.stderr
    assert "resumed: 6 items" in out.stderr


# 4. Two runs on one output at once.


@pytest.mark.timeout(90)
@pytest.mark.parametrize("second", [["--resume"], []])
def test_a_second_run_on_the_same_output_is_refused(job: Path, second: list[str]) -> None:
    write_items(job / "items.jsonl", 12)
    output = job / "out.jsonl"
    gate = job / "gate"
    args = ["job:score", "-i", "items.jsonl", "-o", "out.jsonl", "--ladder", "thread:2"]
    env = {**os.environ, "PYTHONPATH": _path(job), "GATE": str(gate)}
    first = subprocess.Popen(
        [sys.executable, "-m", "stepdown", "run", *args, "--resume"],
        cwd=job,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not output.exists() or not output.read_text():  # item 0 passes the gate
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        out = stepdown(job, *args, *second, env={"GATE": str(gate)}, timeout=20)
        gate.touch()
        _, first_err = first.communicate(timeout=60)
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    one_line(out, "out.jsonl is in use by another stepdown run")
    assert first.returncode == 0, first_err
    assert read_output(output.read_text()) == doubled(12)


# 11 and 12. Files that are not what a run reads or writes: one line, exit 2, memory bounded.


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("setup", "args", "parts"),
    [
        ("nonutf8", ["-i", "bad.jsonl", "-o", "out.jsonl"], ["bad.jsonl:2: not UTF-8"]),
        ("deep", ["-i", "bad.jsonl", "-o", "out.jsonl"], ["bad.jsonl:1: JSON nested too"]),
        ("long", ["-i", "bad.jsonl", "-o", "out.jsonl"], ["bad.jsonl:2: line longer than 64"]),
        ("long", ["-i", "-", "-o", "out.jsonl"], ["stdin:2: line longer than 64 MiB"]),
        ("", ["-i", "/dev/zero", "-o", "out.jsonl"], ["/dev/zero is a character device"]),
        ("", ["-i", "items.jsonl", "-o", "/dev/full", "--resume"], ["/dev/full is a char"]),
        ("", ["-i", "/proc/self/environ", "-o", "out.jsonl"], ["is under /proc"]),
        ("", ["-i", ".", "-o", "out.jsonl"], ["input . is a directory"]),
        ("", ["-i", "items.jsonl", "-o", "nowhere/out.jsonl"], ["no directory nowhere"]),
        ("", ["-i", "items.jsonl", "-o", "/sys/kernel/stepdown.jsonl"], ["under /sys"]),
        ("", ["-i", "items.jsonl", "-o", "/proc/version"], ["/proc/version is under /proc"]),
        ("", ["-i", "items.jsonl", "-o", ".", "--resume"], ["output . is a directory"]),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2(
    job: Path, setup: str, args: list[str], parts: list[str]
) -> None:
    write_items(job / "items.jsonl", 3)
    bad = job / "bad.jsonl"
    stdin = subprocess.DEVNULL
    if setup == "nonutf8":
        bad.write_bytes(b'{"n": 0}\n"caf\xe9"\n')
    elif setup == "deep":
        bad.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    elif setup == "long":
        with bad.open("wb") as handle:
            handle.write(b'{"n": 0}\n"' + b"x" * (64 * MiB) + b'"\n')
        stdin = bad.open("rb")
    try:
        out = stepdown(job, "job:score", *args, stdin=stdin, preexec_fn=limit_data(1024))
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()  # type: ignore[union-attr]
    one_line(out, *parts)


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("class Stop(BaseException):\n    pass\nraise Stop('no')\n", "Stop: no"),
        ("import sys\nsys.exit(5)\n", "it called sys.exit(5)"),
        ("import asyncio\nraise asyncio.CancelledError()\n", "CancelledError"),
    ],
)
def test_a_module_that_exits_at_import_is_one_line(job: Path, body: str, shown: str) -> None:
    (job / "leaving.py").write_text(body)
    write_items(job / "items.jsonl", 2)
    out = stepdown(job, "leaving:score", "-i", "items.jsonl", "-o", "out.jsonl")
    one_line(out, "cannot import module 'leaving'", shown)


def test_an_output_that_stops_taking_writes_keeps_what_it_took(job: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse a write past the limit (EFBIG) mid-run."""
    write_items(job / "items.jsonl", 40)
    size = len(record(0)) * 10

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    # No bytecode cache written under the limit: a cut-off .pyc of job.py would break the
    # resumed run's import, not stepdown's output.
    out = stepdown(
        job,
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "out.jsonl",
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=small_files,
    )
    one_line(out, "cannot write output out.jsonl: File too large", "--resume")
    finished = stepdown(job, "job:score", "-i", "items.jsonl", "-o", "out.jsonl", "--resume")
    assert finished.returncode == 0, finished.stderr
    assert read_output((job / "out.jsonl").read_text()) == doubled(40)


@pytest.mark.timeout(90)
def test_a_result_too_large_for_one_line_is_that_items_error(job: Path) -> None:
    write_items(job / "items.jsonl", 1)
    out = stepdown(
        job, "job:huge", "-i", "items.jsonl", "-o", "out.jsonl", "--ladder", "sequential"
    )
    assert out.returncode == 1, out.stderr
    error = read_output((job / "out.jsonl").read_text())[0]
    assert isinstance(error, dict)
    assert "result is too large" in error["message"]
    resumed = stepdown(job, "job:huge", "-i", "items.jsonl", "-o", "out.jsonl", "--resume")
    assert resumed.returncode == 1, resumed.stderr  # the error line is kept, and still counts
    assert "resumed: 1 items" in resumed.stderr
    assert "1 items in out.jsonl are errors from an earlier run" in resumed.stderr
