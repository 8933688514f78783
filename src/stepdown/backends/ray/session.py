"""What stepdown started: a private Ray (or a connection it opened), and stopping it.

stepdown shuts down only what it started: when the last backend using it shuts down with
``reuse=False``, at interpreter exit, or on :func:`stop`. A private instance is bound to
127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import Reason, ResourceFailure
from .owner import OWNER, Late

__all__ = [
    "CURRENT",
    "Current",
    "Session",
    "job_config",
    "oom_retries",
    "processes",
    "shut",
    "start_private",
    "stop",
]

log = logging.getLogger("stepdown")

START_TIMEOUT = 60.0  # a private instance takes 2-7 s to start on a busy 2-core machine
STOP_TIMEOUT = 30.0
STORE_MIN = 100 * 2**20  # Ray refuses less than 75 MiB
STORE_MAX = 2**30


@dataclass
class Session:
    """A Ray that stepdown started (``address=None``: a private instance) or connected to,
    and the backends using it (a warm pool keeps idle ones)."""

    address: str | None
    cpus: int
    reuse: bool
    users: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def busy(self) -> bool:
        return any(user.busy() for user in list(self.users))


class Current:
    """The one Ray this process's stepdown started or connected to (Ray allows one connection
    a process). ``lock`` guards ``session`` and is held while a backend starts."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.lock = threading.Lock()
        self._atexit = False

    def stop_at_exit(self) -> None:
        if not self._atexit:
            atexit.register(stop)
            self._atexit = True


CURRENT = Current()


def stop() -> None:
    """Shut down the Ray that stepdown started in this process (a private instance, or a
    connection it opened); a Ray the caller initialised is left alone. Idempotent; also runs
    at interpreter exit. Backends still using it see it gone and step down."""
    with CURRENT.lock:
        session, CURRENT.session = CURRENT.session, None
    ray = sys.modules.get("ray")
    if session is not None and ray is not None:
        shut(ray, session)


def shut(ray: Any, session: Session) -> None:
    """``ray.shutdown()``; for a private instance, then end what outlived it.

    ``ray.shutdown`` stops the processes the driver started, not their children: when the GCS
    had died, the raylet's agents were seen to outlive it, ignoring SIGTERM.
    """

    def close() -> None:
        leftovers = processes(ray) if session.address is None else []
        ray.shutdown()
        _reap(leftovers)

    try:
        OWNER.call(close, STOP_TIMEOUT, "ray.shutdown()", None)
    except Late as exc:
        log.warning("could not shut Ray down: %s", exc)


def processes(ray: Any) -> list[Any]:
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
def oom_retries(count: int) -> Iterator[None]:
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
    from ...units import parse_size

    if "object_store_memory" in options:
        return max(parse_size(options["object_store_memory"]), STORE_MIN)
    from ...planning.resources import probe

    found = probe(max_age=5.0)
    size = STORE_MAX
    if found.memory_available.value is not None:
        size = min(size, found.memory_available.value // 10)
    if found.shm_free.value is not None:
        size = min(size, found.shm_free.value * 8 // 10)
    return max(size, STORE_MIN)


def job_config(ray: Any) -> Any:
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


def start_private(ray: Any, workers: int, options: Mapping[str, Any], retries: int) -> None:
    """Start a private instance: 127.0.0.1 only, ``workers`` CPUs, no dashboard."""
    store = _store_bytes(options)

    def start() -> None:
        try:
            with _loopback(), oom_retries(retries):
                ray.init(
                    address="local",
                    job_config=job_config(ray),
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
        OWNER.call(start, START_TIMEOUT, "starting a private Ray", ray.shutdown)
    except Late as exc:
        raise ResourceFailure(Reason.EXECUTOR_STALLED, str(exc)) from exc
