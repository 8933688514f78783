"""``ray``: each batch is one Ray task, on a private local Ray or on a cluster named by address.

Where Ray runs, first match wins::

    rung option ``address``   ─┐
    ``RAY_ADDRESS``            ─┴─▶ connect: probe the GCS port with a socket, check the auth
                                    token, ray.init(address=...): all within connect_timeout
                                    (5 s), else BackendUnavailable and the run steps down
    ray.is_initialized()       ───▶ the caller's own Ray: used as it is, never shut down
    otherwise                  ───▶ a private instance: 127.0.0.1 only, num_cpus = workers,
                                    no dashboard, a modest object store

stepdown never attaches to a cluster nobody named (a plain ``ray.init()`` would), and it shuts
down only what it started: when the last backend using it shuts down with ``reuse=False``, at
interpreter exit, or on :func:`stop`. With ``reuse=True`` (the default) a private instance,
which takes seconds to start, serves every later ray rung of the process.

Every ``ray.init`` and ``ray.shutdown`` runs on one long-lived thread, the *owner*: Ray ties the
processes it starts to the thread that started them (``PR_SET_PDEATHSIG``), so an instance
started from a short-lived thread dies with that thread. The owner also serialises attempts: a
connect still hanging past its deadline makes the next attempt fail at once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.backend import Backend
from ..core.errors import (
    BackendUnavailable,
    Reason,
    RemoteTraceback,
    ResourceFailure,
    classify,
)
from ..core.rung import BACKENDS

__all__ = ["RayBackend", "ray_status", "stop"]

log = logging.getLogger("stepdown")

T = TypeVar("T")

INSTALL = BACKENDS["ray"].install or "pip install ray"
CONNECT_TIMEOUT = 5.0
START_TIMEOUT = 60.0  # a private instance takes 2-7 s to start on a busy 2-core machine
STOP_TIMEOUT = 30.0
MAX_RETRIES = 1
STORE_MIN = 100 * 2**20  # Ray refuses less than 75 MiB
STORE_MAX = 2**30
PING_EVERY = 2.0
BIG_ARGUMENT = 100 * 2**10  # Ray copies an argument this big into its object store per call
VITAL = ("gcs_server", "raylet")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(f"ray is not installed; install it with: {INSTALL}") from exc
    return ray


# ---- the owner thread -------------------------------------------------------------------


class _Late(Exception):
    """The owner did not finish a call in time."""


@dataclass
class _Job:
    call: Callable[[], Any]
    undo: Callable[[], Any] | None
    what: str
    future: Future[Any] = field(default_factory=Future)
    given_up: bool = False


class _Owner:
    """The one thread that starts, connects and shuts down Ray (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: _Job | None = None

    def call(
        self, call: Callable[[], T], timeout: float, what: str, undo: Callable[[], Any] | None
    ) -> T:
        """``call()`` on the owner thread, waited for at most ``timeout`` seconds.

        Raises what ``call`` raised, or :class:`_Late`. A call that returns after its caller
        gave up is undone with ``undo()`` (a late connection is closed, not kept by surprise).
        """
        job = _Job(call, undo, what)
        with self._lock:
            if self._current is not None:
                raise _Late(f"an earlier call ({self._current.what}) has not returned yet")
            self._current = job
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="stepdown-ray", daemon=True
                )
                self._thread.start()
            self._jobs.put(job)
        try:
            value: T = job.future.result(timeout=max(timeout, 0.0))
        except FutureTimeout:
            with self._lock:
                if not job.future.done():
                    job.given_up = True
                    raise _Late(f"{what} did not finish within {timeout:.1f} s") from None
            value = job.future.result()
        return value

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                value = job.call()
            except BaseException as exc:
                job.future.set_exception(exc)
                self._done(job, undo=False)
                continue
            job.future.set_result(value)
            self._done(job, undo=True)

    def _done(self, job: _Job, undo: bool) -> None:
        with self._lock:
            self._current = None
            late = job.given_up
        if late and undo and job.undo is not None:
            with contextlib.suppress(Exception):
                job.undo()


_OWNER = _Owner()


# ---- what stepdown started --------------------------------------------------------------


@dataclass
class _Session:
    """A Ray that stepdown started (``address=None``: a private instance) or connected to,
    and the backends using it (a warm pool keeps idle ones)."""

    address: str | None
    cpus: int
    reuse: bool
    users: weakref.WeakSet[RayBackend] = field(default_factory=weakref.WeakSet)

    def busy(self) -> bool:
        return any(user.busy() for user in list(self.users))


_session: _Session | None = None
_REMOTES: dict[tuple[Callable[..., Any], int], Any] = {}
_lock = threading.Lock()  # guards _session; held while a backend starts
_atexit_registered = False


def stop() -> None:
    """Shut down the Ray that stepdown started in this process (a private instance, or a
    connection it opened); a Ray the caller initialised is left alone. Idempotent; also runs
    at interpreter exit. Backends still using it see it gone and step down."""
    global _session
    with _lock:
        session, _session = _session, None
    ray = sys.modules.get("ray")
    if session is not None and ray is not None:
        _shut(ray, session)


def _shut(ray: Any, session: _Session) -> None:
    """``ray.shutdown()``; for a private instance, then end what outlived it.

    ``ray.shutdown`` stops the processes the driver started, not their children: when the GCS
    had died, the raylet's agents were seen to outlive it, ignoring SIGTERM.
    """

    def shut() -> None:
        leftovers = _processes(ray) if session.address is None else []
        ray.shutdown()
        _reap(leftovers)

    try:
        _OWNER.call(shut, STOP_TIMEOUT, "ray.shutdown()", None)
    except _Late as exc:
        log.warning("could not shut Ray down: %s", exc)


def _processes(ray: Any) -> list[Any]:
    """The private instance's processes and all their descendants (agents, workers)."""
    import psutil

    node: Any = getattr(
        getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None
    )
    found: list[Any] = []
    try:
        roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
    except Exception:  # no node, or the private API moved: Ray's shutdown alone
        return found
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)]
    return found


def _reap(processes: list[Any]) -> None:
    """Kill whichever of ``processes`` are still alive a moment after Ray's shutdown."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=2)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()  # psutil checks the pid still names the same process


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """Keep ``127.0.0.1`` as the node address while a private instance starts.

    Ray replaces a loopback node address by the host's IP, then binds its servers to every
    interface, unless clusters are disabled (as on macOS and Windows): then it binds to
    127.0.0.1. Private instances need no cluster, so they are started that way.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray without the switch: it binds where it binds
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def _oom_retries(count: int) -> Iterator[None]:
    """Bound Ray's retries of a task its memory monitor killed while this process connects.

    Ray counts those apart from ``max_retries``: ``task_oom_retries`` (15 in Ray 2.60, -1 =
    forever in others), read by the task's owner, this process, when it connects. A cluster's
    own ``_system_config`` and a ``RAY_task_oom_retries`` set by the user win.
    """
    name = "RAY_task_oom_retries"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(count)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _store_bytes(options: Mapping[str, Any]) -> int:
    """The private object store: the option, else a tenth of free memory in [100 MiB, 1 GiB],
    and within /dev/shm (beyond it Ray falls back to a slower file in /tmp)."""
    from ..core.units import parse_size

    if "object_store_memory" in options:
        return max(parse_size(options["object_store_memory"]), STORE_MIN)
    from ..core.resources import probe

    found = probe(max_age=5.0)
    size = STORE_MAX
    if found.memory_available.value is not None:
        size = min(size, found.memory_available.value // 10)
    if found.shm_free.value is not None:
        size = min(size, found.shm_free.value * 8 // 10)
    return max(size, STORE_MIN)


def _job_config(ray: Any) -> Any:
    """Workers search the caller's code directories, as a process pool's workers do.

    Ray itself adds only the script's directory and the working directory; a function from a
    module found through another ``sys.path`` entry (a test directory, a notebook's path) would
    not unpickle on a worker. Paths are used as they are: a cluster's nodes need the same
    layout, as Ray already assumes for those two.
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = [
        os.path.abspath(entry)
        for entry in sys.path
        if entry
        and os.path.isdir(entry)
        and "site-packages" not in entry
        and not any(os.path.realpath(entry).startswith(prefix) for prefix in prefixes)
    ]
    try:
        return ray.job_config.JobConfig(_py_driver_sys_path=paths)
    except TypeError:  # the private parameter moved: Ray's own two paths only
        return ray.job_config.JobConfig()


# ---- reaching a cluster -----------------------------------------------------------------


def _wanted(options: Mapping[str, Any]) -> tuple[str | None, str]:
    """The address a rung names, and where it came from; ``None``: no cluster was named."""
    address = options.get("address")
    if address:
        return (None, "the rung") if address == "local" else (str(address), "the rung's address")
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "local":
        return env, "RAY_ADDRESS"
    return None, ""


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _dialled(ray: Any, address: str) -> str:
    """The address Ray itself will dial: it rewrites ``127.0.0.1`` to the host's IP, and
    ``auto`` to the last cluster ``ray start`` recorded on this machine."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address(address)
    except Exception:  # private API moved, or no cluster recorded for "auto"
        return address
    return str(found) if found else address


def _probe(host: str, port: int, seconds: float) -> str | None:
    """``None`` if something accepts TCP at host:port within ``seconds``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=max(seconds, 0.05)):
            return None
    except TimeoutError:
        return f"no answer within {seconds:.1f} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def _token_hint() -> str:
    """What to set when a cluster refuses us, as Ray 2.59+ decides whether to send a token."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    have = "RAY_AUTH_TOKEN" in os.environ or os.path.exists(path)
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        found = (
            f"a token is available ({'RAY_AUTH_TOKEN' if 'RAY_AUTH_TOKEN' in os.environ else path})"
            if have
            else "then set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, which "
            "`ray get-auth-token` prints on its head node"
        )
        return (
            "the cluster requires token authentication, and Ray sends a token to an explicit "
            f"address only with RAY_AUTH_MODE=token: set RAY_AUTH_MODE=token; {found}"
        )
    return (
        "the cluster refused this process's token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
        "to the cluster's token, which `ray get-auth-token` prints on its head node"
    )


def _reach(address: str, source: str, deadline: float) -> str:
    """Check that a GCS answers where Ray will dial; return that address.

    Raises :class:`BackendUnavailable` at once for a closed port and within the deadline for
    a silent one: ``ray.init`` itself retries an unreachable address for a minute or more.
    """
    ray = _import_ray()
    named = _host_port(address)
    dialled = _dialled(ray, address)
    target = _host_port(dialled)
    if target is None:
        return dialled
    why = _probe(*target, min(deadline - time.monotonic(), CONNECT_TIMEOUT))
    if why is None:
        return dialled
    left = min(deadline - time.monotonic(), 1.0)
    if named is not None and named != target and _probe(*named, left) is None:
        raise BackendUnavailable(
            f"Ray at {address} (from {source}) listens on loopback only, but Ray dials "
            f"{dialled} instead ({why}); set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 to keep "
            "127.0.0.1, or start the cluster with a reachable --node-ip-address"
        )
    where = address if dialled == address else f"{address} (Ray dials {dialled})"
    raise BackendUnavailable(
        f"no Ray cluster answers at {where} (from {source}): {why}; start one with "
        "`ray start --head`, point RAY_ADDRESS or the rung's address at a running cluster, "
        "or remove both to use a private local Ray"
    )


def _gcs_client(ray: Any, address: str) -> Any:
    """A client of the GCS at ``address`` (Ray's own, private class): connects, never starts."""
    return ray._raylet.GcsClient(address=address)


def _check_token(ray: Any, dialled: str) -> None:
    """Fail fast on a refused token: ``ray.init`` retries it for 20 s before giving up."""
    try:
        _gcs_client(ray, dialled)
    except Exception as exc:
        if "AuthenticationError" in {c.__name__ for c in type(exc).__mro__}:
            raise
        # Anything else: ray.init tries again, and reports it in its own words.


def _connect(
    ray: Any, address: str, dialled: str, source: str, deadline: float, retries: int
) -> None:
    def connect() -> None:
        _check_token(ray, dialled)
        with _oom_retries(retries):
            ray.init(
                address=address,
                job_config=_job_config(ray),
                log_to_driver=False,
                logging_level=logging.WARNING,
                ignore_reinit_error=True,
            )

    try:
        _OWNER.call(connect, deadline - time.monotonic(), f"connecting to {address}", ray.shutdown)
    except _Late as exc:
        raise BackendUnavailable(f"Ray at {address} (from {source}): {exc}") from exc
    except Exception as exc:
        names = {c.__name__ for c in type(exc).__mro__}
        hint = _token_hint() if "AuthenticationError" in names else f"{type(exc).__name__}: {exc}"
        raise BackendUnavailable(
            f"cannot connect to Ray at {address} (from {source}): {hint}"
        ) from exc


def _start_private(ray: Any, workers: int, options: Mapping[str, Any], retries: int) -> None:
    store = _store_bytes(options)

    def start() -> None:
        try:
            with _loopback(), _oom_retries(retries):
                ray.init(
                    address="local",
                    job_config=_job_config(ray),
                    num_cpus=workers,
                    num_gpus=0,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    object_store_memory=store,
                    _node_ip_address="127.0.0.1",
                    ignore_reinit_error=True,
                )
        except BaseException:
            with contextlib.suppress(Exception):
                ray.shutdown()  # a half-started instance
            raise

    try:
        _OWNER.call(start, START_TIMEOUT, "starting a private Ray", ray.shutdown)
    except _Late as exc:
        raise ResourceFailure(Reason.EXECUTOR_STALLED, str(exc)) from exc


# ---- the backend ------------------------------------------------------------------------


def _settle(out: Future[Any], done: Future[Any]) -> None:
    """Complete our future from Ray's, translating at the boundary."""
    error = done.exception()
    if error is None:
        out.set_result(done.result())
        return
    out.set_exception(_translate(error))


def _translate(error: BaseException) -> BaseException:
    names = {c.__name__ for c in type(error).__mro__}
    cause = getattr(error, "cause", None)
    if "RayTaskError" in names and isinstance(cause, BaseException):
        # The batch wrapper returns tasks' exceptions as values, so what escaped it is
        # infrastructure (a function that cannot be unpickled on the worker, ...): pass the
        # original on, with the worker's traceback, and let the runner classify it.
        cause.__cause__ = RemoteTraceback(str(getattr(error, "traceback_str", error)))
        return cause
    if "RayError" not in names:
        return error
    # Ray's own failures carry pages of diagnostics (an OOM kill lists the top memory users):
    # the reason comes from the classification table, the detail is the first line.
    lines = str(error).strip().splitlines() or [""]
    first = lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."
    failure = ResourceFailure(
        classify(error) or Reason.EXECUTOR_BROKEN, f"{type(error).__name__}: {first}"
    )
    failure.__cause__ = error
    return failure


class RayBackend(Backend):
    """Each submitted batch is one Ray task with ``max_retries`` (default 1) for system
    failures and none for exceptions; results come back through ``ObjectRef.future()``."""

    name = "ray"
    in_process = False

    def __init__(self, workers: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(workers, options)
        self._ray: Any = None
        self._session: _Session | None = None  # set when stepdown started the Ray in use
        self._stored: dict[bytes, Any] = {}
        self._running: dict[Future[Any], Any] = {}
        self._running_lock = threading.Lock()
        self._pinged = 0.0

    @property
    def max_retries(self) -> int:
        return int(self.options.get("max_retries", MAX_RETRIES))

    def start(self) -> None:
        global _session
        ray = _import_ray()
        self._ray = ray
        address, source = _wanted(self.options)
        with _lock:
            if _session is not None and not ray.is_initialized():
                _session = None  # shut down behind our back, or lost
            if _session is not None and _problem(ray, _session) is not None:
                broken, _session = _session, None
                _shut(ray, broken)  # ours and broken (its GCS died, ...): start afresh
            if ray.is_initialized() and _session is None:
                self._use_callers(ray, address, source)
                return
            if _session is not None and self._fits(_session, address):
                self._join(_session)
                return
            if _session is not None and _session.busy():
                raise BackendUnavailable(
                    f"Ray in this process is busy with another ray rung "
                    f"({_session.address or 'a private instance'}); Ray allows one connection "
                    "a process"
                )
            self._open(ray, address, source)

    def _fits(self, session: _Session, address: str | None) -> bool:
        if session.address != address:
            return False
        # An idle private instance too small for this rung is replaced by a bigger one.
        return address is not None or session.cpus >= self.workers or session.busy()

    def _join(self, session: _Session) -> None:
        session.reuse = bool(self.options.get("reuse", session.reuse))
        session.users.add(self)
        self._session = session

    def _open(self, ray: Any, address: str | None, source: str) -> None:
        """Start a private Ray or connect to ``address``, replacing an idle Ray of ours."""
        global _atexit_registered, _session
        deadline = time.monotonic() + float(self.options.get("connect_timeout", CONNECT_TIMEOUT))
        # Probe first: an idle Ray of ours is not given up for a cluster that is not there.
        dialled = "" if address is None else _reach(address, source, deadline)
        if _session is not None:
            idle, _session = _session, None
            _shut(ray, idle)  # its idle backends see the connection gone and are not reused
        if not _atexit_registered:
            atexit.register(stop)
            _atexit_registered = True
        if address is None:
            _start_private(ray, self.workers, self.options, self.max_retries)
        else:
            _connect(ray, address, dialled, source, deadline, self.max_retries)
        reuse = bool(self.options.get("reuse", True))
        _session = _Session(address, self.workers if address is None else 0, reuse)
        self._join(_session)

    def _use_callers(self, ray: Any, address: str | None, source: str) -> None:
        if address is not None:
            current = ray.get_runtime_context().gcs_address
            if _dialled(ray, address) != current and address != "auto":
                raise BackendUnavailable(
                    f"this process is already connected to Ray at {current}; it cannot also "
                    f"connect to {address} (from {source}): Ray allows one connection a process"
                )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        key = (fn, self.max_retries)
        remote = _REMOTES.get(key)
        if remote is None:
            # Kept across backends: a new remote function is exported to the GCS on its first
            # call, a synchronous round trip Ray retries for a minute if the GCS is gone.
            remote = self._ray.remote(max_retries=self.max_retries, retry_exceptions=False)(fn)
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
        global _session
        self._stored.clear()
        session, self._session = self._session, None
        if session is None:
            return
        with _lock:
            session.users.discard(self)
            if session.users or _session is not session:
                return
            if session.reuse and not stop_now:
                return
            _session = None
        _shut(self._ray, session)


def _problem(ray: Any, session: _Session | None, ping: bool = True) -> str | None:
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


# ---- for `stepdown doctor` --------------------------------------------------------------


def ray_status(address: str | None = None, timeout: float = 4.0) -> dict[str, Any]:
    """What the ray rung would find here, without starting Ray, in at most ``timeout`` seconds
    (never more than 5, ``import ray`` included unless it alone takes longer).

    Keys: ``installed``, ``version``, ``install`` (the command, when not installed),
    ``address`` and ``source`` (what would be dialled, and who named it; ``None``: a private
    instance would start), ``reachable``, ``nodes`` and ``cpus`` (alive nodes and their CPUs),
    ``auth`` (``RAY_AUTH_MODE`` as set), ``error`` (why not reachable, and what to set).
    """
    began = time.monotonic()
    status: dict[str, Any] = {
        "installed": False,
        "version": None,
        "install": None,
        "address": None,
        "source": None,
        "reachable": None,
        "nodes": None,
        "cpus": None,
        "auth": os.environ.get("RAY_AUTH_MODE"),
        "error": None,
    }
    try:
        ray = _import_ray()
    except BackendUnavailable:
        status["install"] = INSTALL
        return status
    status["installed"] = True
    status["version"] = getattr(ray, "__version__", None)
    named, source = _wanted({"address": address} if address else {})
    if named is None:
        status["source"] = "a private local instance would start"
        return status
    status["address"], status["source"] = named, source
    deadline = began + min(timeout, 5.0)
    try:
        dialled = _reach(named, source, deadline)
    except BackendUnavailable as exc:
        status["reachable"], status["error"] = False, exc.detail
        return status
    status["address"] = dialled
    answer: Future[tuple[int, float]] = Future()

    def count() -> None:
        try:
            info = _gcs_client(ray, dialled).get_all_node_info(timeout=2)
            alive = [n for n in info.values() if n.state == 0]
            cpus = sum(float(n.resources_total.get("CPU", 0.0)) for n in alive)
            answer.set_result((len(alive), cpus))
        except BaseException as exc:
            answer.set_exception(exc)

    threading.Thread(target=count, name="stepdown-ray-status", daemon=True).start()
    try:
        status["nodes"], status["cpus"] = answer.result(timeout=max(deadline - time.monotonic(), 0))
        status["reachable"] = True
    except FutureTimeout:
        status["reachable"] = False
        status["error"] = f"the GCS at {dialled} accepts connections but did not answer in time"
    except Exception as exc:
        status["reachable"] = False
        names = {c.__name__ for c in type(exc).__mro__}
        status["error"] = (
            _token_hint() if "AuthenticationError" in names else f"{type(exc).__name__}: {exc}"
        )
    return status
