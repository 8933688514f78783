"""What starting a pool costs on this host: measured, cached per user, read cheaply.

Two figures per start kind (``fork``, ``forkserver``, ``spawn``: the ``process`` backend by start
method; ``loky``, ``thread``, ``ray``; ``sequential`` costs nothing), in seconds::

    imports   the first import of the backend's module and its dependency (loky, ray) in a
              fresh interpreter that has already imported what planning imports: a cold
              script pays it once, a warm one never
    start     from creating the backend's executor until a worker has answered, imports done
              (what the runner waits for before it hands the pool work): every cold pool
              pays it (worker processes import what they need inside this span)

Where a figure comes from, best first::

    measure()  each kind in fresh interpreters, through the project's own backends, 3 times,
               the kinds interleaved; the medians
    record()   starts the runner timed: the start figure is the median of the last 5 figures,
               measured or recorded
    defaults   the figures below, not measured on this host

They are cached per user, per interpreter, CPU count and dependency versions, in a small
JSON file beside the host budget (:mod:`.startup_cache`); a cache that is missing, corrupt or
refused is ignored, and the figures fall back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence

from ..backends.registry import info, infos, load_backend
from ..errors import UsageError
from ..records import record as record_class  # this module has a record() of its own
from .startup_cache import SAMPLES, Figures, cached, is_seconds, update

__all__ = ["DEFAULTS", "Cost", "costs", "kind_of", "measure", "record"]

log = logging.getLogger("stepdown")

# (start, imports) in seconds: the cold totals in policy/builtin.toml's comment (fork ~25 ms,
# forkserver ~60 ms, loky ~110 ms, to the first result, imports included) and the design's
# (spawn ~50 ms, Ray ~2.2 s), split as measured on a 2-CPU host where planning had already
# imported multiprocessing and concurrent.futures; thread and sequential start next to nothing.
DEFAULTS: dict[str, tuple[float, float]] = {
    "fork": (0.015, 0.010),
    "forkserver": (0.050, 0.010),
    "spawn": (0.040, 0.010),
    "loky": (0.085, 0.025),
    "thread": (0.001, 0.002),
    "ray": (2.2, 0.4),
    "sequential": (0.0, 0.0),
}

_REPEAT = 3
_ANSWER_WAIT = 60.0  # how long a child waits for its workers to answer
_CHILD_TIMEOUT = 120.0  # a Ray start may take seconds, its shutdown more


@record_class(frozen=True)
class Cost:
    """What starting one kind of pool costs here, in seconds, and where the figures come from.

    ``start``: from creating the executor until a worker has answered, the backend already
    imported: the wait before the runner hands the pool work (and what it records of each
    pool it starts).
    ``imports``: what the first import of the backend and its dependency costs a fresh
    interpreter. ``source``: e.g. "measured 2026-11-30 by stepdown doctor".
    """

    start: float
    imports: float
    source: str


def costs() -> dict[str, Cost]:
    """The start-up cost of every kind in :data:`DEFAULTS` on this host: measured or recorded
    figures from the cache, else the defaults.

    Measures nothing and never raises; reads the cache file only when it has changed since this
    process last read it (one ``stat`` otherwise).
    """
    kinds = cached()
    return {kind: _cost(kind, kinds.get(kind)) for kind in DEFAULTS}


def record(kind: str, seconds: float) -> None:
    """Fold one observed cold start of ``kind`` (the span of :attr:`Cost.start`, in seconds)
    into the cache: the start cost becomes the median of the last 5 figures. Never raises: a
    figure that cannot be stored is dropped, with a DEBUG line."""
    if not isinstance(kind, str) or not is_seconds(seconds):
        log.debug("start-up costs: ignored record(%r, %r)", kind, seconds)
        return

    def fold(kinds: dict[str, Figures]) -> None:
        figures = kinds.setdefault(kind, {})
        figures["samples"] = [*figures.get("samples", []), float(seconds)][-SAMPLES:]
        figures["recorded"] = figures.get("recorded", 0) + 1
        figures["last"] = time.time()

    try:
        update(fold)
    except (OSError, UsageError, ValueError) as exc:
        log.debug("start-up costs: a start of %s not recorded: %s", kind, exc)


def measure(
    kinds: Iterable[str] | None = None,
    workers: int = 2,
    *,
    repeat: int = _REPEAT,
    by: str = "stepdown.planning.startup.measure()",
) -> dict[str, Cost]:
    """Measure ``kinds`` now (default: each local kind whose backend is installed; Ray only
    when named, since it starts a cluster), store the figures, and return each kind's cost.

    Each start runs in a fresh interpreter through the project's own backend, ``repeat``
    times, the kinds interleaved; the figures are the medians. A kind that cannot be measured
    (its backend missing, a pool that failed) keeps its earlier cost, its source saying why.
    ``by`` names the measurer in the source. A cache that cannot be written is a WARNING; the
    figures are returned all the same. Raises :class:`UsageError` for an unknown kind, or a
    ``workers`` or ``repeat`` below 1.
    """
    chosen = list(_implicit() if kinds is None else kinds)
    for kind in chosen:
        _rung(kind)
    for name, value in (("workers", workers), ("repeat", repeat)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"measure(): {name} must be a whole number >= 1, not {value!r}")
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in chosen}
    problems: dict[str, str] = {}
    for _ in range(repeat):
        for kind in chosen:
            if kind not in problems:
                figures = _run_child(kind, workers)
                if isinstance(figures, str):
                    problems[kind] = figures
                else:
                    runs[kind].append(figures)
    now = time.time()
    measured: dict[str, Figures] = {
        kind: {
            "samples": [f["start"] for f in figures],
            "imports": _median([f["imports"] for f in figures]),
            "measured": now,
            "by": by,
            "recorded": 0,
        }
        for kind, figures in runs.items()
        if kind not in problems
    }
    if measured:
        try:
            update(lambda found: found.update(measured))
        except (OSError, UsageError) as exc:
            log.warning("start-up costs measured but not stored: %s", exc)
    before = costs()
    result = {}
    for kind in chosen:
        if kind in measured:
            result[kind] = _cost(kind, measured[kind])
        else:
            earlier = before.get(kind) or _cost(kind, None)
            source = f"not measured: {problems[kind]}; {earlier.source}"
            result[kind] = Cost(earlier.start, earlier.imports, source)
    return result


def kind_of(backend: str, start_method: str | None = None) -> str:
    """The start kind of a rung: its start method for the backend that starts workers by one
    (``None`` or an unresolved ``"auto"``: the platform's default, ``fork`` on Linux before
    Python 3.14), else the backend's name (``loky``, ``thread``, ...). Raises
    :class:`UsageError` for an unknown backend."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if start_method in methods:
        return start_method
    if info(backend).name != _by_method():
        return info(backend).name
    # Not get_start_method(): without allow_none it fixes the default for the whole process.
    default: str = methods[0]  # documented as the platform's default
    return multiprocessing.get_start_method(allow_none=True) or default


# ---- the figures ---------------------------------------------------------------------------


def _cost(kind: str, entry: Figures | None) -> Cost:
    start, imports = DEFAULTS.get(kind, (0.0, 0.0))
    if not entry or not entry.get("samples"):
        if kind == _last_kind():
            return Cost(0.0, 0.0, "nothing to start")
        return Cost(start, imports, "default: not measured on this host")
    start = _median(entry["samples"])
    recorded = entry.get("recorded", 0)
    starts = f"{recorded} start{'s' if recorded != 1 else ''}"
    if entry.get("measured") is not None:
        source = f"measured {_day(entry['measured'])} by {entry.get('by') or 'measure()'}"
        if recorded:
            source += f", then {starts} recorded"
        return Cost(start, entry.get("imports", imports), source)
    return Cost(
        start,
        imports,
        f"recorded on the fly, {starts} (last {_day(entry.get('last'))}); imports: default",
    )


def _last_kind() -> str:
    return next(i.name for i in infos() if i.last)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _day(when: object) -> str:
    if not isinstance(when, (int, float)):
        return "at an unknown time"
    return time.strftime("%Y-%m-%d", time.localtime(when))


def _implicit() -> list[str]:
    """The kinds measured when none are named: local pools whose backend is installed."""
    import importlib.util

    found = []
    for kind in DEFAULTS:
        try:
            backend = info(_rung(kind)[0])
        except UsageError:
            continue
        installed = backend.dependency is None or importlib.util.find_spec(backend.dependency)
        if backend.local and not backend.single and installed:
            found.append(kind)
    return found


def _rung(kind: str) -> tuple[str, dict[str, str]]:
    """The backend and options that start a pool of ``kind``; :class:`UsageError` if none does."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if kind in methods:
        return _by_method(), {"start_method": kind}
    pools = [i.name for i in infos() if not i.single and i.name != _by_method()]
    if kind in pools:
        return kind, {}
    raise UsageError(f"unknown start kind {kind!r}; known kinds: {', '.join([*methods, *pools])}")


def _by_method() -> str:
    """The backend whose workers start by the start method its rung names (``process``; loky
    takes only ``"auto"`` and starts fresh interpreters)."""
    return next(i.name for i in infos() if "start_method" in i.options and not i.fresh)


# ---- measuring, in a fresh interpreter ----------------------------------------------------


def _run_child(kind: str, workers: int) -> dict[str, float] | str:
    """One start of ``kind`` measured in a fresh interpreter: its figures, or what went wrong."""
    import subprocess  # only when measuring: planning imports this module on every run

    env = dict(os.environ)
    # The child must import this stepdown, whether installed or found on sys.path.
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    # Not `-m`: workers that start a fresh interpreter would import this module again as
    # __mp_main__, a cost of the measuring, not of the pool.
    code = f"from {__name__} import _main; _main({kind!r}, {workers})"
    command = [sys.executable, "-c", code]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_CHILD_TIMEOUT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {_CHILD_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"cannot run {sys.executable} ({exc.strerror})"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"the measuring process exited with {done.returncode}"
    try:
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"the measuring process printed {done.stdout[-200:]!r}, not its figures"
    if not (
        isinstance(figures, dict) and all(is_seconds(figures.get(k)) for k in ("start", "imports"))
    ):
        return f"the measuring process printed {figures!r}, not its figures"
    return {"start": float(figures["start"]), "imports": float(figures["imports"])}


def _time_one(kind: str, workers: int) -> dict[str, float]:
    """Import the backend of ``kind``, then start a pool of ``workers`` (until a worker has
    answered, as the runner starts one); both spans in seconds."""
    import importlib

    # Start from what a run has imported before it starts a pool (a string: planning is what
    # will import this module).
    importlib.import_module("stepdown.planning.setup")
    name, options = _rung(kind)
    began = time.perf_counter()
    cls = load_backend(name)
    if info(name).dependency is not None:
        importlib.import_module(str(info(name).dependency))
    imported = time.perf_counter()
    backend = cls(workers, options)
    try:
        backend.start()
        started = time.perf_counter()
        backend.submit(abs, -1).result(timeout=_ANSWER_WAIT)  # it works
    except BaseException:
        backend.abandon()
        raise
    backend.shutdown()
    return {"start": started - imported, "imports": imported - began}


def _main(kind: str, workers: int) -> None:
    """The measuring process: its figures as JSON on stdout, or a failure as one line."""
    try:
        figures = _time_one(kind, workers)
    except Exception as exc:  # the parent shows this line as the reason
        sys.exit(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    print(json.dumps(figures))
