"""The ``ray`` rung: each batch is one Ray task; results come back through ``ObjectRef.future()``.

A failed Ray task's future fails with Ray's own exception, translated at the runner's one
boundary (:mod:`stepdown.backends.failures`), whose table knows Ray's classes by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from ...errors import BackendUnavailable
from ..base import Backend
from .connect import CONNECT_TIMEOUT, connect, dialled_address, reach, wanted
from .owner import import_ray
from .session import CURRENT, Session, shut, start_private

__all__ = ["BACKEND", "RayBackend"]

MAX_RETRIES = 1
PING_EVERY = 2.0
BIG_ARGUMENT = 100 * 2**10  # Ray copies an argument this big into its object store per call
VITAL = ("gcs_server", "raylet")

# Kept across backends: a new remote function is exported to the GCS on its first call, a
# synchronous round trip Ray retries for a minute if the GCS is gone.
_REMOTES: dict[tuple[Callable[..., Any], int, int], Any] = {}


def _settle(out: Future[Any], done: Future[Any]) -> None:
    """Complete our future from Ray's (a failure as Ray raised it: the runner translates)."""
    error = done.exception()
    if error is None:
        out.set_result(done.result())
    else:
        out.set_exception(error)


class RayBackend(Backend):
    """Each submitted batch is one Ray task with ``max_retries`` (default 1) for system
    failures and none for exceptions; results come back through ``ObjectRef.future()``."""

    name = "ray"
    in_process = False
    # Ray's workers outlive a backend: max_tasks_per_child is Ray's own max_calls instead.
    own_workers = False

    def __init__(self, workers: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(workers, options)
        self._ray: Any = None
        self._session: Session | None = None  # set when stepdown started the Ray in use
        self._stored: dict[bytes, Any] = {}
        self._running: dict[Future[Any], Any] = {}
        self._running_lock = threading.Lock()
        self._pinged = 0.0

    @property
    def max_retries(self) -> int:
        return int(self.options.get("max_retries", MAX_RETRIES))

    def start(self) -> None:
        ray = import_ray()
        self._ray = ray
        address, source = wanted(self.options)
        with CURRENT.lock:
            if CURRENT.session is not None and not ray.is_initialized():
                CURRENT.session = None  # shut down behind our back, or lost
            if CURRENT.session is not None and _problem(ray, CURRENT.session) is not None:
                broken, CURRENT.session = CURRENT.session, None
                shut(ray, broken)  # ours and broken (its GCS died, ...): start afresh
            session = CURRENT.session
            if ray.is_initialized() and session is None:
                self._use_callers(ray, address, source)
                return
            if session is not None and self._fits(session, address):
                self._join(session)
                return
            if session is not None and session.busy():
                raise BackendUnavailable(
                    f"Ray in this process is busy with another ray rung "
                    f"({session.address or 'a private instance'}); Ray allows one connection "
                    "a process"
                )
            self._open(ray, address, source)

    def _fits(self, session: Session, address: str | None) -> bool:
        if session.address != address:
            return False
        # An idle private instance too small for this rung is replaced by a bigger one.
        return address is not None or session.cpus >= self.workers or session.busy()

    def _join(self, session: Session) -> None:
        session.reuse = bool(self.options.get("reuse", session.reuse))
        session.users.add(self)
        self._session = session

    def _open(self, ray: Any, address: str | None, source: str) -> None:
        """Start a private Ray or connect to ``address``, replacing an idle Ray of ours."""
        deadline = time.monotonic() + float(self.options.get("connect_timeout", CONNECT_TIMEOUT))
        # Probe first: an idle Ray of ours is not given up for a cluster that is not there.
        dialled = "" if address is None else reach(address, source, deadline)
        if CURRENT.session is not None:
            idle, CURRENT.session = CURRENT.session, None
            shut(ray, idle)  # its idle backends see the connection gone and are not reused
        CURRENT.stop_at_exit()
        if address is None:
            start_private(ray, self.workers, self.options, self.max_retries)
        else:
            connect(ray, address, dialled, source, deadline, self.max_retries)
        reuse = bool(self.options.get("reuse", True))
        session = Session(address, self.workers if address is None else 0, reuse)
        CURRENT.session = session
        self._join(session)

    def _use_callers(self, ray: Any, address: str | None, source: str) -> None:
        if address is not None:
            current = ray.get_runtime_context().gcs_address
            if dialled_address(ray, address) != current and address != "auto":
                raise BackendUnavailable(
                    f"this process is already connected to Ray at {current}; it cannot also "
                    f"connect to {address} (from {source}): Ray allows one connection a process"
                )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        # A worker killed for running over task_timeout must not have its task retried; one that
        # must not run more than max_tasks_per_child tasks gets one batch (the runner caps it).
        retries = 0 if self.task_timeout is not None else self.max_retries
        calls = 1 if self.max_tasks_per_child is not None else 0
        key = (fn, retries, calls)
        remote = _REMOTES.get(key)
        if remote is None:
            remote = self._ray.remote(max_retries=retries, retry_exceptions=False, max_calls=calls)(
                fn
            )
            _REMOTES[key] = remote
        ref = remote.remote(*(self._stored_once(a) for a in args))
        out: Future[Any] = Future()
        # A submitted Ray task cannot be taken back quietly: like a running future's, cancel()
        # is refused, so a runner that gives up calls abandon(), which drops it.
        out.set_running_or_notify_cancel()
        with self._running_lock:
            self._running[out] = ref
        out.add_done_callback(self._forget)
        ref.future().add_done_callback(lambda done: _settle(out, done))
        return out

    def _stored_once(self, arg: Any) -> Any:
        """A big bytes argument (the function, shipped with every batch) goes to the object
        store once; Ray would otherwise copy it there for every call."""
        if not isinstance(arg, bytes) or len(arg) < BIG_ARGUMENT:
            return arg
        ref = self._stored.get(arg)
        if ref is None:
            ref = self._stored[arg] = self._ray.put(arg)
        return ref

    def _forget(self, future: Future[Any]) -> None:
        with self._running_lock:
            self._running.pop(future, None)

    def health(self) -> str | None:
        if self._ray is None or self.closed:
            return None
        now = time.monotonic()
        ping = now - self._pinged >= PING_EVERY
        if ping:
            self._pinged = now
        why = _problem(self._ray, self._session, ping)
        if why is not None:
            self._pinged = 0.0  # keep asking until it answers
        return why

    def abandon(self) -> None:
        if self.closed:
            return
        broken = self.health() is not None
        self.closed = True
        # Tasks in Ray are left to finish and their results dropped, not ray.cancel()ed: on a
        # loaded machine Ray 2.60 answered a cancel racing a task's completion with a failed
        # internal check ("Tried to complete task that was not pending") that ends the whole
        # calling process.
        with self._running_lock:
            self._running.clear()
        self._release(stop_now=broken)

    def shutdown(self) -> None:
        if self.closed:
            return
        broken = self.health() is not None
        self.closed = True
        self._release(stop_now=broken)

    def busy(self) -> bool:
        """Whether tasks of this backend are still in Ray."""
        return bool(self._running) and not self.closed

    def _release(self, stop_now: bool) -> None:
        self._stored.clear()
        session, self._session = self._session, None
        if session is None:
            return
        with CURRENT.lock:
            session.users.discard(self)
            if session.users or CURRENT.session is not session:
                return
            if session.reuse and not stop_now:
                return
            CURRENT.session = None
        shut(self._ray, session)


def _problem(ray: Any, session: Session | None, ping: bool = True) -> str | None:
    """What is wrong with the Ray in use, or ``None``; ``session`` is ours, if it is."""
    if not ray.is_initialized():
        return "the Ray connection is gone (ray.shutdown() was called, or Ray lost its GCS)"
    if session is not None and session.address is None:
        dead = _dead_processes(ray)
        if dead:
            return f"the private Ray's {dead} died"
    why = _ping(ray) if ping else None
    return None if why is None else f"Ray's GCS does not answer ({why})"


def _dead_processes(ray: Any) -> str | None:
    """The vital processes of the private instance that have died, named, or ``None``."""
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    if node is None:
        return None
    try:
        dead = [
            f"{kind} (exit code {process.returncode})"
            for kind, process in node.dead_processes()
            if kind in VITAL
        ]
    except Exception:  # private API moved: no figure
        return None
    return ", ".join(dead) or None


def _ping(ray: Any) -> str | None:
    """``None`` if the GCS answers a read within a second, else why not."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    client = getattr(getattr(worker, "global_worker", None), "gcs_client", None)
    if client is None:
        return None
    try:
        client.internal_kv_get(b"stepdown-ping", None, timeout=1)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


BACKEND = RayBackend
