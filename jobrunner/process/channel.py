"""The pipe between the supervisor and one child: newline-delimited JSON messages both ways.

The messages, one attrs class per kind, are in ``messages.py``. End of file on either side
means the other side is gone.

The supervisor's ends never block: what a busy child has not read yet waits in an outbox that
the supervisor's main loop flushes when the socket is writable, so one stuck child cannot stall
the supervisor. A child's end blocks on write; the supervisor always reads.

A child ``defer``s each job's end (a ``Done`` entry): the entries go as one ``Dones`` message
in front of the next message, so a busy child costs the supervisor one write and one wake-up
per fetch, not per job, and itself no message to build per job. The child flushes what it
deferred before it blocks (fetch, wait) and before it exits.
"""

import json
import logging
import select
import socket
from typing import Any, Optional

from jobrunner.process import messages

log = logging.getLogger("jobrunner.channel")

#: Bytes a supervisor-side outbox may hold; past that the child is not reading at all and
#: further messages are dropped (the heartbeat check kills such a child).
OUTBOX_LIMIT = 1 << 20


class Channel:
    """One end of a socketpair, speaking whole JSON lines."""

    def __init__(self, sock, blocking=True):
        self.sock = sock
        self.sock.setblocking(blocking)
        self.blocking = blocking
        self._buffer = b""
        self._outbox = b""
        self._dones = []          # deferred ``Done`` entries, as plain tuples
        self._poll = None         # for ``has_input``, made at its first call
        self.closed = False

    @classmethod
    def pair(cls):
        """Two connected ends: (supervisor's, non-blocking; child's, blocking)."""
        a, b = socket.socketpair()
        return cls(a, blocking=False), cls(b)

    def fileno(self):
        return self.sock.fileno()

    @property
    def pending_output(self):
        """True while part of a message waits for the other side to read."""
        return bool(self._outbox) and not self.closed

    def send(self, message):
        """Write one message (after any deferred ones); returns False when the other side is
        gone."""
        if self.closed:
            return False
        return self._write(self._take_dones() + messages.encode(message), message.kind)

    def defer(self, job_id: Any, worker: Optional[str], queue: Optional[str], outcome: str,
              micros: int) -> None:
        """Keep the end of one job (a ``messages.Done``) for the ``Dones`` message that goes
        with the next ``send`` or ``flush_deferred``. A plain tuple, encoded with the others
        in one go: this runs once per job."""
        if not self.closed:
            self._dones.append((job_id, worker, queue, outcome, micros))

    def flush_deferred(self) -> bool:
        """Write the deferred entries now; returns False when the other side is gone."""
        if not self._dones:
            return not self.closed
        data = self._take_dones()
        if self.closed:
            return False
        return self._write(data, "dones")

    def _take_dones(self) -> bytes:
        """The deferred entries as one encoded ``Dones`` (b"" when there are none), forgotten
        here."""
        if not self._dones:
            return b""
        dones, self._dones = self._dones, []
        return messages.encode_dones(dones)

    def _write(self, data, kind):
        """Blocking ends write at once; the supervisor's non-blocking ends go via the outbox."""
        if self.blocking:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                self.closed = True
                return False
        if len(self._outbox) + len(data) > OUTBOX_LIMIT:
            log.warning("dropping a %r message: the child has not read its pipe", kind)
            return True
        self._outbox += data
        return self.flush()

    def flush(self):
        """Write what the outbox holds, as far as the socket takes it without blocking."""
        while self._outbox and not self.closed:
            try:
                sent = self.sock.send(self._outbox)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.closed = True
                return False
            self._outbox = self._outbox[sent:]
        return not self.closed

    def has_input(self) -> bool:
        """Whether ``receive`` may find something: a message, part of one, or the end of the
        file. One ``poll`` of the socket, several times cheaper than a ``receive`` that finds
        nothing (it raises inside): a child asks after every job."""
        if self.closed:
            return True
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
        return bool(self._poll.poll(0))

    def receive(self):
        """Read what is available without blocking; returns a list of messages.

        Sets ``closed`` when the other side has hung up. A line that is not a message we know
        is logged and skipped: nothing a child writes may crash the supervisor.
        """
        if self.sock.fileno() < 0:
            return []
        try:
            while True:
                chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
                if not chunk:
                    self.closed = True
                    break
                self._buffer += chunk
                if len(chunk) < 65536:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.closed = True
        *lines, self._buffer = self._buffer.split(b"\n")
        lines = [line for line in lines if line]
        if not lines:
            return []
        # One decode for everything read: a busy child's lines can arrive by the hundred.
        try:
            values = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            values = None
        if values is not None and len(values) == len(lines):
            decoded = [messages.decode(value) for value in values]
            if None not in decoded:
                return decoded
        return _decode_each(lines)

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def _decode_each(lines):
    """Line by line, skipping (and logging) what is not a message."""
    received = []
    for line in lines:
        try:
            message = messages.decode(json.loads(line))
        except ValueError:
            message = None
        if message is not None:
            received.append(message)
        else:
            log.warning("ignoring a malformed message on a child's pipe: %r", line[:200])
    return received
