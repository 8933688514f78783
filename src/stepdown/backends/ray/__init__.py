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

The package, one module a job: :mod:`.owner` (the owner thread, importing Ray), :mod:`.session`
(what stepdown started, and stopping it), :mod:`.connect` (reaching a cluster by address),
:mod:`.backend` (the rung) and :mod:`.status` (what ``stepdown doctor`` shows).
"""

from __future__ import annotations

from .session import stop
from .status import ray_status

__all__ = ["ray_status", "stop"]
