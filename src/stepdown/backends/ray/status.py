"""What the ray rung would find here, for ``stepdown doctor``, without starting Ray."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ...errors import BackendUnavailable
from .connect import gcs_client, reach, token_hint, wanted
from .owner import INSTALL, import_ray

__all__ = ["ray_status"]


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
        ray = import_ray()
    except BackendUnavailable:
        status["install"] = INSTALL
        return status
    status["installed"] = True
    status["version"] = getattr(ray, "__version__", None)
    named, source = wanted({"address": address} if address else {})
    if named is None:
        status["source"] = "a private local instance would start"
        return status
    status["address"], status["source"] = named, source
    deadline = began + min(timeout, 5.0)
    try:
        dialled = reach(named, source, deadline)
    except BackendUnavailable as exc:
        status["reachable"], status["error"] = False, exc.detail
        return status
    status["address"] = dialled
    answer: Future[tuple[int, float]] = Future()

    def count() -> None:
        try:
            info = gcs_client(ray, dialled).get_all_node_info(timeout=2)
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
            token_hint() if "AuthenticationError" in names else f"{type(exc).__name__}: {exc}"
        )
    return status
