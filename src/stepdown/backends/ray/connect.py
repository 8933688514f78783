"""Reaching a Ray cluster by address, within a deadline.

The rung's ``address`` option, else ``RAY_ADDRESS``, names the cluster. The GCS port is probed
with a socket and the auth token checked before ``ray.init(address=...)``, all within the
rung's ``connect_timeout`` (5 s): ``ray.init`` itself retries an unreachable address for a minute
or more. A cluster that is not there is :class:`~stepdown.errors.BackendUnavailable`, and the
run steps down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from ...errors import BackendUnavailable
from .owner import OWNER, Late, import_ray
from .session import job_config, oom_retries

__all__ = [
    "CONNECT_TIMEOUT",
    "connect",
    "dialled_address",
    "gcs_client",
    "reach",
    "token_hint",
    "wanted",
]

CONNECT_TIMEOUT = 5.0


def wanted(options: Mapping[str, Any]) -> tuple[str | None, str]:
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


def dialled_address(ray: Any, address: str) -> str:
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


def token_hint() -> str:
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


def reach(address: str, source: str, deadline: float) -> str:
    """Check that a GCS answers where Ray will dial; return that address.

    Raises :class:`BackendUnavailable` at once for a closed port and within the deadline for
    a silent one: ``ray.init`` itself retries an unreachable address for a minute or more.
    """
    ray = import_ray()
    named = _host_port(address)
    dialled = dialled_address(ray, address)
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


def gcs_client(ray: Any, address: str) -> Any:
    """A client of the GCS at ``address`` (Ray's own, private class): connects, never starts."""
    return ray._raylet.GcsClient(address=address)


def _check_token(ray: Any, dialled: str) -> None:
    """Fail fast on a refused token: ``ray.init`` retries it for 20 s before giving up."""
    try:
        gcs_client(ray, dialled)
    except Exception as exc:
        if "AuthenticationError" in {c.__name__ for c in type(exc).__mro__}:
            raise
        # Anything else: ray.init tries again, and reports it in its own words.


def connect(
    ray: Any, address: str, dialled: str, source: str, deadline: float, retries: int
) -> None:
    def connect() -> None:
        _check_token(ray, dialled)
        with oom_retries(retries):
            ray.init(
                address=address,
                job_config=job_config(ray),
                log_to_driver=False,
                logging_level=logging.WARNING,
                ignore_reinit_error=True,
            )

    try:
        OWNER.call(connect, deadline - time.monotonic(), f"connecting to {address}", ray.shutdown)
    except Late as exc:
        raise BackendUnavailable(f"Ray at {address} (from {source}): {exc}") from exc
    except Exception as exc:
        names = {c.__name__ for c in type(exc).__mro__}
        hint = token_hint() if "AuthenticationError" in names else f"{type(exc).__name__}: {exc}"
        raise BackendUnavailable(
            f"cannot connect to Ray at {address} (from {source}): {hint}"
        ) from exc
