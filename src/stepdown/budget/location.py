"""Where budgets live, and where they go when another user has taken that place.

::

    $XDG_RUNTIME_DIR is this user's directory ──▶ $XDG_RUNTIME_DIR/stepdown
    else the fallback below exists ─────────────▶ <home>/.cache/stepdown/run-<host>
    else <tempdir>/stepdown-<uid> is missing or this user's own directory ──▶ there
    else (taken: another user's directory, a link, a file) ──▶ make the fallback; WARNING
         the home directory is not this user's private one ──▶ no place: no budget; WARNING

Why: in a sticky ``/tmp`` any local user can create ``/tmp/stepdown-<your uid>`` first, and
only they can remove it. stepdown never uses such a directory, but refusing to run would hand
them a denial of service, so the budget moves to the home directory, which only you can write.
The fallback is made once and then found by every instance of this user on this host, whatever
``/tmp`` holds later: instances agree on one budget because its existence is the record. The
host name is in its name because a home directory may be shared between hosts.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..records import record

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Location", "locate", "runtime_root"]

log = logging.getLogger("stepdown")

_HOST_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")
# Findings already logged by this process: every run surveys again, but one WARNING is enough.
_WARNED: set[str] = set()


@record(frozen=True)
class Location:
    """Where a budget's directories go.

    ``root`` is the directory that holds them. ``finding`` says why it is not the usual place
    (``None``: it is). ``usable`` is False when no safe place was found: the budget then counts
    nothing and grants every slot asked.
    """

    root: str
    finding: str | None = None
    usable: bool = True


def runtime_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where budgets live (see :func:`locate`)."""
    from pathlib import Path  # not on a run's path: ~2.5 ms of a cold start's imports

    return Path(locate(environ).root)


def locate(environ: Mapping[str, str] | None = None) -> Location:
    """Where budgets live: the flow in the module docstring. Creates only the fallback, and
    only when the usual place is taken; a failure to create it is a finding, not an error."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_RUNTIME_DIR", "")
    # sudo often keeps another user's XDG_RUNTIME_DIR: budgets must not land there.
    if os.path.isabs(xdg) and _owned_directory(xdg):
        return Location(os.path.join(xdg, "stepdown"))
    import tempfile  # only without a runtime directory: it costs ~3 ms of imports

    usual = os.path.join(tempfile.gettempdir(), f"stepdown-{os.geteuid()}")
    home = _home(env)
    fallback = _fallback_root(home) if home is not None else None
    taken = _taken(usual)
    if fallback is not None and os.path.lexists(fallback):
        made = f"budgets are in {fallback}, made when {usual} could not be used"
        if taken is not None:
            return Location(fallback, f"{made} ({usual} {taken})")
        return Location(fallback, f"{made}; to go back, remove it while no instance runs")
    if taken is None:
        return Location(usual)
    problem = f"{usual} {taken}: another user may have made it to block your budget"
    if fallback is None:
        return _warn(Location(usual, f"{problem}; {_no_home(env)}", usable=False))
    try:
        os.makedirs(os.path.dirname(fallback), mode=0o700, exist_ok=True)
        os.mkdir(fallback, 0o700)
    except FileExistsError:  # another instance made it first: the same place, as wanted
        pass
    except OSError as exc:
        finding = f"{problem}; cannot make {fallback} ({exc.strerror})"
        return _warn(Location(usual, f"{finding}; running without a host budget", usable=False))
    return _warn(Location(fallback, f"{problem}; budgets are in {fallback} instead"))


def _fallback_root(home: str) -> str:
    """The fallback under ``home``, named for this host."""
    host = _HOST_CHARACTERS.sub("_", _hostname())[:64] or "host"
    return os.path.join(home, ".cache", "stepdown", f"run-{host}")


def _taken(path: str) -> str | None:
    """What makes ``path`` unusable for good (``None``: missing, or this user's directory)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    return None


def _home(environ: Mapping[str, str]) -> str | None:
    """This user's home directory, if it is theirs alone: owned by them, writable by no one
    else (another user able to write there could steer the fallback)."""
    home = environ.get("HOME", "")
    if not os.path.isabs(home):
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            return None
    if not os.path.isabs(home) or not _owned_directory(home, private=True):
        return None
    return home


def _no_home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or "(HOME unset)"
    return (
        f"the home directory {home} is not this user's private directory, so there is no "
        "safe fallback; running without a host budget (set XDG_RUNTIME_DIR or TMPDIR to a "
        "directory of your own)"
    )


def _owned_directory(path: str, *, private: bool = False) -> bool:
    """A directory of this user (links followed); ``private``: writable by no one else."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
    return mine and not (private and st.st_mode & 0o022)


def _warn(location: Location) -> Location:
    if location.finding is not None and location.finding not in _WARNED:
        _WARNED.add(location.finding)
        log.warning("host budget: %s", location.finding)
    return location


def _hostname() -> str:
    """This host's name; ``os.uname`` where there is one (importing socket costs ~5 ms)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()
