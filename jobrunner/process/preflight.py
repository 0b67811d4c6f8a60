"""What the supervisor warns about before it forks: set-ups that lose locks or jobs later."""

import threading

#: Seconds orchestrators wait after SIGTERM before SIGKILL (Kubernetes' default grace period;
#: ECS and Heroku use the same 30 s).
ORCHESTRATOR_GRACE = 30.0


def warnings(shutdown_timeout: float, abort_grace: float) -> list:
    """Warning lines for this process and these settings; none when all is well."""
    found = []
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        found.append(f"{len(others)} threads already run in the supervisor "
                     f"({', '.join(others)}): a lock one of them holds when a child is forked "
                     "stays locked in that child; start threads in Worker.__init__, after the fork")
    longest_stop = shutdown_timeout + abort_grace
    if longest_stop >= ORCHESTRATOR_GRACE:
        found.append(f"a stop may take {longest_stop:.0f}s (shutdown timeout + "
                     f"{abort_grace:.0f}s to requeue): Kubernetes, ECS and Heroku send SIGKILL "
                     f"after {ORCHESTRATOR_GRACE:.0f}s; lower the shutdown timeout")
    return found
