"""Whether a worker started by a fresh interpreter can rebuild the caller's ``__main__``.

A ``forkserver`` or ``spawn`` worker is a new interpreter. To find what the caller defined in
``__main__`` (the class of an item, a function an item refers to) it imports the caller's main
module again, as ``__mp_main__``, and unpickles each call against it. That fails, or does harm:

- where ``__main__`` has no file to import: ``python -`` (multiprocessing tries to run a file
  named ``<stdin>`` and every worker dies with a traceback), a ``__file__`` that is not Python
  source (some notebooks); and, where ``__main__`` defines classes or functions, ``python -c``,
  the REPL, IPython and Jupyter, ``python -m package`` (the worker's ``__main__`` lacks them: a
  task whose item is an instance of one kills its worker);
- where the main script is running outside ``if __name__ == "__main__":``: each fresh
  interpreter runs the script's body again, stepdown call included.

``fork`` copies the caller instead, and ``loky`` ships functions and items with cloudpickle and
never imports ``__main__`` again: both work in every case above. The planner reads this snapshot
(:class:`Launch`) and starts process workers by ``fork`` where a fresh interpreter would fail.

The snapshot also holds what ``start_method = "auto"`` weighs (see the planner): the threads a
fork would copy, and under strict overcommit the memory the kernel still lets processes commit.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
from types import FrameType, FunctionType, ModuleType
from typing import TYPE_CHECKING

from ..records import record

if TYPE_CHECKING:
    import ast

__all__ = ["FRESH_METHODS", "Launch", "read_launch"]

# Start methods whose workers are fresh interpreters (the others copy the caller).
FRESH_METHODS = ("forkserver", "spawn")


@record(frozen=True)
class Launch:
    """How this process can start worker processes: the start methods it has, the one
    multiprocessing uses when none is named, and why a fresh interpreter cannot rebuild the
    caller's ``__main__`` (``None``: it can)."""

    methods: tuple[str, ...]
    default: str
    fresh_fails: str | None = None
    # Threads besides the one that forks, not counting process pools' own (their manager and
    # queue threads, which the standard library forks beside): a fork copies the locks they
    # hold at that moment, and the child never sees them released.
    threads: int = 0
    # Bytes processes may still commit when the kernel refuses to overcommit
    # (vm.overcommit_memory = 2: each fork commits the caller's writable memory again), else
    # ``None``.
    commit_left: int | None = None
    thread_names: tuple[str, ...] = ()  # the Python threads among ``threads``


def read_launch() -> Launch:
    """The snapshot for this process, at this moment (the main script's current line counts)."""
    methods = tuple(multiprocessing.get_all_start_methods())
    main = sys.modules.get("__main__")
    threads, names = _other_threads()
    return Launch(
        methods, _default_method(methods), _fresh_fails(main), threads, _commit_left(), names
    )


_POOL_THREADS = ("_ExecutorManagerThread", "_QueueManagerThread")


def _other_threads() -> tuple[int, tuple[str, ...]]:
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        native = threading.active_count()
    current = threading.current_thread()
    pools = 0
    named: list[str] = []
    for t in threading.enumerate():
        if type(t).__name__ in _POOL_THREADS or t.name == "QueueFeederThread":
            pools += 1
        elif t is not current:
            named.append(t.name)
    return max(0, native - 1 - pools), tuple(named)


def _commit_left() -> int | None:
    try:
        with open("/proc/sys/vm/overcommit_memory") as mode:
            if mode.read().strip() != "2":
                return None
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        limit = int(fields["CommitLimit"].split()[0]) * 1024
        committed = int(fields["Committed_AS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return max(0, limit - committed)


def _default_method(methods: tuple[str, ...]) -> str:
    # Not get_start_method() without allow_none: that would fix the default for the whole
    # process, and a later multiprocessing.set_start_method() of the caller's would fail.
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is not None:
        return chosen
    # Python's documented defaults: spawn on Windows and macOS; on other POSIX systems fork
    # until 3.14, forkserver (where the platform has it) from then on.
    if sys.platform in ("win32", "darwin"):
        return "spawn"
    if sys.version_info >= (3, 14) and "forkserver" in methods:
        return "forkserver"
    return "fork"


def _fresh_fails(main: ModuleType | None) -> str | None:
    """Why a fresh interpreter cannot rebuild ``main`` (as multiprocessing does it), or ``None``."""
    if main is None:
        return "there is no __main__ module"
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None)
    if spec_name == "__main__" or (spec_name and spec_name.endswith(".__main__")):
        return _left_alone(main, f"__main__ is {spec_name} (python -m)")
    if spec_name is None and not isinstance(path, str):
        if sys.argv[:1] == ["-c"]:
            return _left_alone(main, "__main__ was given with python -c")
        if "IPython" in sys.modules:
            return _left_alone(main, "__main__ is an IPython or Jupyter session")
        return _left_alone(main, "__main__ is an interactive session")
    if path == "<stdin>":
        return "__main__ was read from stdin (python -): a fresh interpreter runs a file <stdin>"
    if not isinstance(path, str) or not os.path.isfile(path):
        return f"__main__'s file {path} does not exist"
    try:
        guards = _guards(os.path.abspath(path), os.stat(path).st_mtime_ns)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return f"__main__'s file {path} is not Python source a fresh interpreter could import"
    line = _running_line(main)
    if line is not None and not any(first <= line <= last for first, last in guards):
        return (
            f'{path} runs this at line {line}, outside `if __name__ == "__main__":`: '
            "each fresh interpreter would run the script again"
        )
    if line is None and not guards:
        return (
            f'{path} has no `if __name__ == "__main__":` block: each fresh interpreter '
            "would run the whole script again"
        )
    return None


def _left_alone(main: ModuleType, what: str) -> str | None:
    """A ``__main__`` a fresh interpreter does not import matters only if it defines classes
    or functions: an item, a result or an argument may refer to one by name."""
    defined = sorted(
        name
        for name, value in list(vars(main).items())
        if isinstance(value, (type, FunctionType)) and value.__module__ == "__main__"
    )
    if not defined:
        return None
    shown = ", ".join(defined[:3]) + (", ..." if len(defined) > 3 else "")
    return f"{what} and defines {shown}, which a fresh interpreter cannot import"


@functools.lru_cache(maxsize=8)
def _guards(path: str, _mtime_ns: int) -> tuple[tuple[int, int], ...]:
    """The line ranges of the top-level ``if __name__ == "__main__":`` bodies of a script (read
    again when the file changes)."""
    import ast  # a script's own guard is rarely asked about; not worth ~1 ms of every start

    with open(path, "rb") as source:
        tree = ast.parse(source.read(), path)
    return tuple(
        (node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno)
        for node in tree.body
        if isinstance(node, ast.If) and _is_main_test(node.test)
    )


def _is_main_test(test: ast.expr) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = {_name_or_text(test.left), _name_or_text(test.comparators[0])}
    return sides == {"name:__name__", "text:__main__"}


def _name_or_text(node: ast.expr) -> str | None:
    import ast

    if isinstance(node, ast.Name):
        return f"name:{node.id}"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return f"text:{node.value}"
    return None


def _running_line(main: ModuleType) -> int | None:
    """The line the main script's own body is at now, in the main thread (``None``: the body
    has finished, or runs no more)."""
    frame: FrameType | None = sys._current_frames().get(threading.main_thread().ident or 0)
    namespace = vars(main)
    while frame is not None:
        if frame.f_globals is namespace and frame.f_code.co_name == "<module>":
            return frame.f_lineno
        frame = frame.f_back
    return None
