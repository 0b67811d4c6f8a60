"""How soon jobrunner's own connections give up on a server or network that stopped answering.

Every connection a child, housekeeper, metrics reader or operator command opens, to Postgres
or Redis, uses these (docs/troubleshooting.md, "A server that hangs"). TCP notices on its own
when what was sent goes unacknowledged for ``USER_TIMEOUT`` seconds, and an idle connection
probes the server after ``KEEPALIVE_IDLE`` seconds and gives up about ``USER_TIMEOUT``
seconds after the last sign of life. So a dead host, a partition or a frozen VM breaks the
connection within ``USER_TIMEOUT`` seconds (``HUNG_SERVER_BOUND``), the driver raises its
connection error, and the child reconnects, instead of waiting for the supervisor to kill it.
"""

import socket

#: Seconds a connection may be idle before TCP starts probing the server.
KEEPALIVE_IDLE = 5
#: Seconds between probes, and how many go unanswered before the connection is dropped (where
#: TCP_USER_TIMEOUT is missing, this is what bounds an idle connection: 5 + 1 x 5 seconds).
KEEPALIVE_INTERVAL = 1
KEEPALIVE_COUNT = 5
#: Seconds sent data (or a probe) may stay unacknowledged before the connection is dropped
#: (Linux's TCP_USER_TIMEOUT). Long enough for a brief loss of packets, short enough that a
#: child notices a hung server well before the supervisor's heartbeat timeout (30 s).
USER_TIMEOUT = 10
#: Seconds a new connection may take, handshakes included.
CONNECT_TIMEOUT = 10
#: What the documentation promises: a connection to a server that no longer answers at the
#: TCP level fails within this many seconds.
HUNG_SERVER_BOUND = USER_TIMEOUT


def tcp_options() -> dict:
    """TCP-level socket options (``IPPROTO_TCP``) for keepalive and the user timeout, as
    redis-py's ``socket_keepalive_options`` takes them; those the platform lacks are left out."""
    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE, "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
              "TCP_KEEPCNT": KEEPALIVE_COUNT, "TCP_USER_TIMEOUT": USER_TIMEOUT * 1000}
    return {getattr(socket, name): value for name, value in wanted.items()
            if hasattr(socket, name)}
