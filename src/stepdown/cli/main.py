"""The ``stepdown`` command: ``doctor``, ``plan``, ``run``, ``bench``, ``demo``.

Exit codes: 0 done, 1 some task failed, 2 bad usage or a run that could not finish (a
one-line message, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import StepdownError, UsageError

__all__ = ["main"]

log = logging.getLogger("stepdown")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: exit 2, one line
        command = self.prog.removeprefix("stepdown").strip()
        raise UsageError(f"{command}: {message}" if command else message)


def _common(parser: argparse.ArgumentParser, *, policy: bool = True) -> None:
    if policy:
        parser.add_argument("--profile", help="profile of the policy to use (default: auto)")
        parser.add_argument(
            "--policy",
            help="policy file (TOML); default: STEPDOWN_POLICY, "
            "stepdown.toml, pyproject.toml [tool.stepdown]",
        )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "-v", "--verbose", action="count", default=0, help="log decisions (-v INFO, -vv DEBUG)"
    )
    noise.add_argument("-q", "--quiet", action="store_true", help="only errors")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stepdown",
        description=(
            "Run one function over many inputs on the best executor this machine can afford, "
            "stepping down without losing a result."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    doctor = sub.add_parser("doctor", help="what this machine offers, and the plans it gets")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    _common(doctor)

    plan = sub.add_parser("plan", help="the ladder and worker counts for N tasks, and why")
    plan.add_argument("--tasks", type=int, default=None, help="number of tasks")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _common(plan)

    run = sub.add_parser("run", help="run MODULE:FUNCTION over a JSONL file of items")
    run.add_argument("function", metavar="MODULE:FUNCTION")
    run.add_argument(
        "--input", "-i", required=True, help="JSONL file, one item a line; a pipe; - for stdin"
    )
    run.add_argument("--output", "-o", required=True, help="JSONL file of results; - for stdout")
    run.add_argument("--resume", action="store_true", help="skip items already in --output")
    run.add_argument(
        "--errors",
        choices=("raise", "return"),
        default="return",
        help="stop at the first failing item (raise) or record it and go on",
    )
    run.add_argument("--ladder", help="comma-separated rungs, e.g. loky:3,thread:2")
    run.add_argument(
        "--task-timeout",
        type=float,
        metavar="SECONDS",
        help="record an item that runs longer as a TaskTimeout error (its worker is replaced)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    _common(run)

    bench = sub.add_parser("bench", help="what each rung of the plan buys on this machine")
    bench.add_argument("--tasks", type=int, default=40)
    bench.add_argument("--json", action="store_true")
    _common(bench)

    demo = sub.add_parser("demo", help="the demo job: score ARC tasks against candidate programs")
    demo.add_argument("--tasks", type=int, default=None, help="score only the first N tasks")
    demo.add_argument(
        "--kill-a-worker",
        action="store_true",
        help="SIGKILL one worker halfway, to watch the step down",
    )
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    _common(demo)
    return parser


def _logging(args: argparse.Namespace) -> None:
    level = (
        logging.ERROR
        if args.quiet
        else {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stepdown: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    report = doctor(profile=args.profile, policy=args.policy)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.explain())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from ..planning.setup import plan

    if args.tasks is not None and args.tasks < 0:
        raise UsageError(f"--tasks must be 0 or more, not {args.tasks}")
    chosen = plan(tasks=args.tasks, profile=args.profile, policy=args.policy)
    if args.json:
        _print_json(chosen.to_dict())
    else:
        print(chosen.explain())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..options import Options
    from .run import load_callable, run_jsonl

    fn = load_callable(args.function)
    ladder = None
    if args.ladder:
        ladder = [part.strip() for part in args.ladder.split(",") if part.strip()]
    # Every item's outcome is written, error or not; --errors says whether to go on after one.
    options = Options(
        ladder=ladder,
        profile=args.profile,
        policy=args.policy,
        task_timeout=args.task_timeout,
        errors="return",
        ordered=False,
    )
    return run_jsonl(
        fn,
        args.input,
        args.output,
        resume=args.resume,
        errors=args.errors,
        progress=args.progress,
        options=options,
        stderr=sys.stderr,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench

    result = bench(tasks=args.tasks, profile=args.profile, policy=args.policy)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.table())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.main import demo

    return demo(
        tasks=args.tasks,
        profile=args.profile,
        policy=args.policy,
        kill_a_worker=args.kill_a_worker,
        progress=args.progress,
    )


_COMMANDS = {
    "doctor": _cmd_doctor,
    "plan": _cmd_plan,
    "run": _cmd_run,
    "bench": _cmd_bench,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stepdown`` console script."""
    try:
        args = _parser().parse_args(argv)
        _logging(args)
        return _COMMANDS[args.command](args)
    except StepdownError as exc:  # a UsageError, or a ResourceFailure no rung could absorb
        print(f"stepdown: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stepdown: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stepdown doctor --json | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
