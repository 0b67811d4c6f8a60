"""Fixtures for tests that read jobrunner's log lines: its set-up writing to a stream of the test."""

import io
import logging

import pytest

from jobrunner import log as logsetup


class CountingStream(io.StringIO):
    """A text stream that records each write, as the system calls it would make."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def stream():
    return CountingStream()


@pytest.fixture
def configure(stream):
    """``configure(level, fmt, app_handlers=())``: ``logsetup.setup`` writing to ``stream``, on
    a root logger that holds only ``app_handlers`` (the handlers pytest puts on the root during
    a test leave it; pytest removes them after the test anyway). The handlers setup and the
    test added are taken off again after the test."""
    root, own = logging.getLogger(), logging.getLogger("jobrunner")
    saved = (root.level, own.handlers[:], own.level, own.propagate)
    added = []

    def configure(level="INFO", fmt="text", app_handlers=()):
        root.handlers[:] = list(app_handlers)
        took_root = logsetup.setup(level, fmt, stream=stream)
        added.extend(root.handlers)
        return took_root
    yield configure
    root.handlers[:] = [handler for handler in root.handlers if handler not in added
                        and getattr(handler, "stream", None) is not stream]
    root.setLevel(saved[0])
    own.handlers[:], own.level, own.propagate = saved[1:]
    logging.captureWarnings(False)
    logsetup.set_label("supervisor")
