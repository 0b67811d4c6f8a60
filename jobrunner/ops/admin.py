"""The operator commands' logic: which backends to talk to, and each command's result as a dict.

A backend is used when its connection setting is given (flag or environment), when
``--backend`` names it, or, failing both, when its default server answers. A backend that must
be used and cannot be reports ``"unavailable"`` with the reason; one that was only probed and
did not answer reports ``"skipped"``. The result shapes are documented in
``docs/operations.md`` and in ``jobrunner/cli/admin.py``; ``SCHEMA`` changes when one changes
incompatibly.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Mapping

from jobrunner import config
from jobrunner.backends import NAMES, make_backend
from jobrunner.errors import BackendUnavailable

if TYPE_CHECKING:
    from jobrunner.backends.inspector import Inspector

SCHEMA = 1
OK, UNAVAILABLE, SKIPPED = "ok", "unavailable", "skipped"
#: Seconds to wait for a server before calling it unreachable.
CONNECT_TIMEOUT = 5


def given(key: str, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> bool:
    """True when setting ``key`` comes from a flag or the environment, not from a default."""
    environ = os.environ if environ is None else environ
    if flags.get(key) is not None:
        return True
    # The environment names `config.resolve` reads; config keeps the table private.
    names = config._ENVIRONMENT[key][0]
    return any(environ.get(name) for name in names)


class Session:
    """Inspectors of the selected backends, and how each one answered.

    ``status[name]`` is ``{"status": "ok"|"unavailable"|"skipped", "error": str|None}``;
    ``inspectors[name]`` exists for the backends that are ``ok``.
    """

    def __init__(self, flags: Mapping[str, Any], only: str | None = None,
                 environ: Mapping[str, str] | None = None):
        self.settings = config.resolve(flags=flags, environ=environ)
        self.status: dict[str, dict[str, Any]] = {}
        self.inspectors: dict[str, Inspector] = {}
        for name in ([only] if only else NAMES):
            backend = make_backend(name, self.settings)
            required = only is not None or given(backend.setting, flags, environ)
            self._open(backend, required)

    def _open(self, backend, required):
        try:
            self.inspectors[backend.name] = backend.inspector(timeout=CONNECT_TIMEOUT)
            self.status[backend.name] = {"status": OK, "error": None}
        except BackendUnavailable as exc:
            self.status[backend.name] = {"status": UNAVAILABLE if required else SKIPPED,
                                         "error": str(exc)}

    def unavailable(self) -> list[str]:
        """Names of backends that had to answer and did not."""
        return [n for n, s in self.status.items() if s["status"] == UNAVAILABLE]

    def close(self) -> None:
        for inspector in self.inspectors.values():
            inspector.close()
        self.inspectors = {}

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- stats ----------------------------------------------------------------------------------

_EMPTY_TOTALS = dict.fromkeys(
    ("waiting", "scheduled", "retrying", "dead", "busy", "processed", "failed"))


def stats(session: Session) -> dict[str, Any]:
    """``jobrunner stats --json``: one section per selected backend."""
    backends = {}
    for name, status in session.status.items():
        section = dict(status, totals=dict(_EMPTY_TOTALS), queues=[], processes=[],
                       processes_note=None, schedules=[])
        inspector = session.inspectors.get(name)
        if inspector is not None:
            section.update(inspector.stats())
            section["schedules"] = schedules(inspector)
        backends[name] = section
    return {"schema": SCHEMA, "generated_at": time.time(), "backends": backends}


def schedules(inspector: Inspector) -> list[dict[str, Any]]:
    """Periodic schedules stored in one backend, times as epoch seconds (JSON-friendly)."""
    return [dict(entry, next_run=_epoch(entry["next_run"]), last_run=_epoch(entry["last_run"]))
            for entry in inspector.schedules()]


def _epoch(moment):
    return None if moment is None else moment.timestamp()


# -- health ---------------------------------------------------------------------------------

def check(session: Session) -> dict[str, Any]:
    """``jobrunner check --json``: ok when every backend that must answer does, and one does."""
    backends = {}
    for name, status in session.status.items():
        section = dict(status, version=None, warnings=[])
        inspector = session.inspectors.get(name)
        if inspector is not None:
            section.update(inspector.health())
        backends[name] = section
    ok = bool(session.inspectors) and not session.unavailable()
    return {"schema": SCHEMA, "ok": ok, "backends": backends}
