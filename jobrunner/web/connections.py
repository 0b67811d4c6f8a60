"""The dashboard's backends: which ones it shows, and a small pool of inspectors for each.

A backend is shown as the operator commands choose it (``ops.admin``): when its connection
setting is given, when ``backends=`` names it, or when its default server answers. A backend
that must be shown and cannot be reached is shown with the reason; one that was only probed
and did not answer is left out. Servers are first reached on the first request, not when the
app is made, so that importing a project that mounts the dashboard connects to nothing.

Requests may run in several threads at once: each takes an inspector of its own from the
pool (a new one when none is free) and gives it back, so no connection is shared between two
requests. An inspector whose connection broke is closed instead of given back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from jobrunner import config
from jobrunner.backends import NAMES, connection_errors, make_backend
from jobrunner.errors import BackendUnavailable
from jobrunner.ops.admin import CONNECT_TIMEOUT, OK, SKIPPED, UNAVAILABLE, given

if TYPE_CHECKING:
    from jobrunner.backends.inspector import Inspector
    from jobrunner.config import Settings

#: Inspectors kept open per backend between requests.
POOL_SIZE = 4
#: Seconds before a backend that did not answer is tried again.
RETRY_AFTER = 10.0


class BackendGone(Exception):
    """A backend's server did not answer, or went away during a request."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class Backend:
    """One backend of the dashboard: how to open an inspector, whether it must answer."""

    def __init__(self, name: str, opener: Callable[[], Inspector], required: bool):
        self.name = name
        self.opener = opener
        self.required = required
        self.status: dict[str, str | None] = {"status": None, "error": None}
        self._idle: list[Inspector] = []
        self._lock = threading.Lock()
        self._failed_at: float | None = None

    @property
    def shown(self) -> bool:
        """False for a backend that was only probed and did not answer."""
        return self.status["status"] != SKIPPED

    def _open(self) -> Inspector:
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER:
            raise BackendGone(self.name, self.status["error"] or "did not answer")
        try:
            inspector = self.opener()
        except BackendUnavailable as exc:
            self._failed_at = time.monotonic()
            self.status = {"status": UNAVAILABLE if self.required else SKIPPED,
                           "error": str(exc)}
            raise BackendGone(self.name, str(exc)) from None
        self._failed_at = None
        self.status = {"status": OK, "error": None}
        return inspector

    def probe(self) -> None:
        """Reach the server once, unless an inspector is already open, to learn the status."""
        with self._lock:
            if self._idle:
                return
        try:
            self.give_back(self._open())
        except BackendGone:
            pass

    def take(self) -> Inspector:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._open()

    def give_back(self, inspector: Inspector) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(inspector)
                return
        inspector.close()

    def discard(self, inspector: Inspector, reason: str) -> None:
        """Close an inspector whose connection broke; the next request opens a new one."""
        with contextlib.suppress(Exception):
            inspector.close()
        self.status = {"status": UNAVAILABLE if self.required else OK, "error": reason}

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for inspector in idle:
            with contextlib.suppress(Exception):
                inspector.close()


class Backends:
    """The dashboard's backends by name, in the order of ``jobrunner.backends.NAMES``."""

    def __init__(self, source: Mapping[str, Any] | Settings | None = None,
                 backends: Sequence[str] | None = None,
                 inspectors: Mapping[str, Callable[[], Inspector]] | None = None,
                 environ: Mapping[str, str] | None = None):
        self.by_name: dict[str, Backend] = {}
        self._probed = False
        self._lock = threading.Lock()
        if inspectors:
            for name, opener in inspectors.items():
                self.by_name[name] = Backend(name, opener, required=True)
            return
        if isinstance(source, config.Settings):
            settings, flags = source, None
        else:
            flags = dict(source or {})
            settings = config.resolve(flags=flags, environ=environ)
        for name in (backends or NAMES):
            backend = make_backend(name, settings)
            required = backends is not None or (
                flags is not None and given(backend.setting, flags, environ))
            self.by_name[name] = Backend(name, _opener(backend), required)

    def shown(self) -> list[Backend]:
        """The backends the pages show; probes each one on the first call."""
        with self._lock:
            if not self._probed:
                for backend in self.by_name.values():
                    backend.probe()
                self._probed = True
        return [backend for backend in self.by_name.values() if backend.shown]

    def get(self, name: str) -> Backend | None:
        backend = self.by_name.get(name)
        return backend if backend is not None and backend in self.shown() else None

    @contextlib.contextmanager
    def inspector(self, name: str) -> Iterator[Inspector]:
        """An inspector of backend ``name`` for one request; ``BackendGone`` when its server
        does not answer or the connection breaks while it is used."""
        backend = self.by_name[name]
        inspector = backend.take()
        try:
            yield inspector
        except _lost() as exc:
            reason = f"lost the connection: {str(exc).strip()}"
            backend.discard(inspector, reason)
            raise BackendGone(name, reason) from None
        except BaseException:
            backend.give_back(inspector)
            raise
        else:
            backend.give_back(inspector)

    def close(self) -> None:
        for backend in self.by_name.values():
            backend.close()


def _opener(backend) -> Callable[[], Inspector]:
    return lambda: backend.inspector(timeout=CONNECT_TIMEOUT, purpose="jobrunner-web")


_LOST: tuple[type[BaseException], ...] | None = None


def _lost() -> tuple[type[BaseException], ...]:
    """Driver errors that mean a server went away (loaded once, on first use)."""
    global _LOST
    if _LOST is None:
        _LOST = connection_errors()
    return _LOST
