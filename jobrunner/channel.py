"""The pipe between the supervisor and one child: newline-delimited JSON messages both ways.

Child -> supervisor:  ready, beat, start (job id, worker, queue, timeout, token), done (job id,
                      outcome, duration), recycle (asks permission to be replaced).
Supervisor -> child:  quiet, stop, state (housekeeper only), recover (housekeeper only).
End of file on either side means the other side is gone.
"""

import json
import socket


class Channel:
    """One end of a socketpair, speaking whole JSON lines."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = b""
        self.closed = False

    @classmethod
    def pair(cls):
        """Two connected ends: (supervisor's, child's)."""
        a, b = socket.socketpair()
        return cls(a), cls(b)

    def fileno(self):
        return self.sock.fileno()

    def send(self, kind, **fields):
        """Write one message; returns False when the other side is gone."""
        fields["t"] = kind
        data = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def receive(self):
        """Read what is available without blocking; returns a list of message dicts.

        Sets ``closed`` when the other side has hung up.
        """
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
        return [json.loads(line) for line in lines if line]

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

