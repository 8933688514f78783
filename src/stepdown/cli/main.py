"""The ``stepdown`` command: ``doctor``, ``plan``, ``run``, ``bench``, ``demo``.

Exit codes: 0 done, 1 some task failed, 2 bad usage or a run that could not finish (a
one-line message, no traceback), 130 interrupted. A bare ``stepdown`` prints the help and
exits 2, as ``git`` prints its help and fails: nothing was done, and a script that ran
``stepdown "$COMMAND"`` with an empty variable must not count that as success.
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
from .parser import parser

__all__ = ["main"]

log = logging.getLogger("stepdown")


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

    report = doctor(profile=args.profile, policy=args.policy, measure_startup=args.measure)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.explain())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from ..planning.setup import survey
    from .show import budget_status, plan_dict, plan_text

    if args.tasks is not None and args.tasks < 0:
        raise UsageError(f"--tasks must be 0 or more, not {args.tasks}")
    found = survey(args.profile, args.policy)
    chosen = found.plan(args.tasks)
    budget = budget_status(found)
    if args.json:
        _print_json(plan_dict(chosen, budget))
    else:
        print(plan_text(chosen, budget))
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
        resume=args.resume or args.retry_errors,
        retry_errors=args.retry_errors,
        errors=args.errors,
        progress=args.progress,
        options=options,
        stderr=sys.stderr,
        report_json=args.report_json,
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
        command_line = parser()
        args = command_line.parse_args(argv)
        if args.command is None:
            command_line.print_help()
            return 2
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
