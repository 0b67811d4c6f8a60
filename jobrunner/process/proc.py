"""Small process helpers: titles, RSS, and dying with the parent."""

import ctypes
import os
import signal

try:
    import setproctitle as _setproctitle
except ImportError:        # titles are a convenience; run without them
    _setproctitle = None

_PR_SET_PDEATHSIG = 1


def set_title(title):
    """Show ``title`` in ps/top, like Sidekiq and gunicorn do."""
    if _setproctitle is not None:
        _setproctitle.setproctitle(title)


def rss_kb(pid):
    """Resident set size of ``pid`` in KB (Sidekiq's unit), 0 when unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def die_with_parent(parent_pid, sig=signal.SIGUSR1):
    """Ask the kernel to send ``sig`` when the parent dies (Linux); check it did not already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass     # not Linux: pipe EOF still tells the child its parent is gone
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
