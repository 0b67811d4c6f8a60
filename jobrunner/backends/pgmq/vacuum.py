"""VACUUM of the queue tables a supervisor drains, started by its housekeeper.

Every job run leaves two dead row versions in ``pgmq.q_<queue>``: the read rewrites the row (a
new ``vt``; ``vt`` is indexed, so the update is never HOT and adds entries to both indexes),
and the ack deletes it. Those dead index entries sit before the live messages in the primary
key and in the ``vt`` index, and the read (``ORDER BY msg_id`` on the primary key) and the
survey (``min(vt)``) step over every one of them until a VACUUM removes them and frees their
pages: after a drain of 200,000 jobs a read of 10 touched 1,100 buffers instead of 14, and a
second backlog drained at 0.63x the first's rate. Autovacuum does not keep up with such churn:
its launcher looks only every ``autovacuum_naptime`` (a minute by default), a table qualifies
only once 20% of its rows are dead, and whether a run lands between two drains is luck.

So the housekeeper looks at the dead rows of its supervisor's queue tables (one read of
``pg_stat_user_tables``) when it starts, after every ``CHECK_RUNS`` runs its supervisor settled,
and once when the runs stop, and VACUUMs each table with ``VACUUM_DEAD_ROWS`` or more. A quiet
supervisor costs no statement. The VACUUM runs in a thread on a connection of its own, so a
long one (a huge table's first) never holds up the heartbeat or a recovery; only one at a
time. A table the role may not vacuum (it does not own it) is left to autovacuum from then on.
"""

import logging
import threading

import psycopg2

from jobrunner.backends.pgmq.connection import connect
from jobrunner.backends.pgmq.sql import dead_rows_sql, vacuum_sql
from jobrunner.errors import BackendUnavailable

log = logging.getLogger("jobrunner.pgmq")

#: Runs settled by this supervisor between two looks at its queue tables' dead rows.
CHECK_RUNS = 10_000
#: Dead row versions (two per job run) that make a queue table worth a VACUUM: a few seconds
#: of a fast drain, so the dead entries a read steps over stay few.
VACUUM_DEAD_ROWS = 50_000
#: Seconds ``close`` waits for a cancelled VACUUM's thread.
CLOSE_WAIT = 5.0


class RunCount:
    """The runs a supervisor settled since the last call, from the per-minute totals each
    snapshot carries (``SupervisorState.settled``): each minute's total only grows."""

    def __init__(self):
        self._seen = {}

    def new(self, settled):
        totals = {minute: sum(counts) for minute, counts in settled.items()}
        added = sum(max(0, total - self._seen.get(minute, 0)) for minute, total in totals.items())
        self._seen = totals
        return added


class QueueVacuum:
    """Decides, at each housekeeper tick, whether a queue table needs a VACUUM, and runs it."""

    def __init__(self, dsn, cursor):
        self.dsn = dsn
        self.cursor = cursor            # the housekeeper's, for the look at the statistics
        self._runs = RunCount()
        self._since_check = None        # runs since the last look; None: not looked yet
        self._thread = None
        self._conn = None               # the VACUUM's connection, while one runs
        self._closing = False
        self.refused = set()            # queues whose table this role may not vacuum

    def busy(self):
        return self._thread is not None and self._thread.is_alive()

    def tick(self, state):
        added = self._runs.new(state.settled)
        if self._since_check is not None:
            self._since_check += added
        if self.busy() or not self._due(added):
            return
        self._since_check = 0
        queues = [q for q in dict.fromkeys(state.queues) if q not in self.refused]
        if not queues:
            return
        sql, params = dead_rows_sql(queues)
        self.cursor.execute(sql, params + [VACUUM_DEAD_ROWS])
        found = self.cursor.fetchall()
        if found:
            log.info("vacuuming %s", ", ".join(f"{q} ({dead:,} dead rows)" for q, dead in found))
            self._thread = threading.Thread(target=self._vacuum, args=([q for q, _ in found],),
                                            name="jobrunner-vacuum", daemon=True)
            self._thread.start()

    def _due(self, added):
        # After the runs stop, one more look: the drain's tail would otherwise wait for the
        # next busy spell, or for autovacuum.
        return (self._since_check is None or self._since_check >= CHECK_RUNS
                or (added == 0 and self._since_check > 0))

    def _vacuum(self, queues):
        try:
            self._conn = connect(self.dsn, purpose="jobrunner vacuum")
            with self._conn.cursor() as cursor:
                for queue in queues:
                    if self._closing:
                        break
                    cursor.execute(vacuum_sql(queue))
                    self._note_refusal(queue)
        except (psycopg2.Error, BackendUnavailable) as exc:   # the latter: could not connect
            if not self._closing:
                log.warning("could not vacuum the tables of %s: %s", ", ".join(queues),
                            str(exc).strip())
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _note_refusal(self, queue):
        """VACUUM only warns about a table it may not touch: such a warning, not the one for a
        table another VACUUM holds, means this role never can."""
        notices, self._conn.notices[:] = list(self._conn.notices), []
        if any("skipping" in n and "lock not available" not in n for n in notices):
            self.refused.add(queue)
            log.warning("cannot vacuum the table of queue %s: %s; leaving it to autovacuum",
                        queue, " ".join(n.strip() for n in notices))

    def close(self):
        """Cancel a VACUUM still running (its work so far is kept; autovacuum or the next
        housekeeper finishes it) so a stopped supervisor leaves nothing behind."""
        self._closing = True
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel()
            except psycopg2.Error:
                pass
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT)
