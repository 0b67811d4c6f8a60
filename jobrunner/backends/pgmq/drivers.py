"""What an enqueue needs from the caller's driver: psycopg2 or psycopg 3, told apart by type.

Web code hands ``PgEnqueuer`` its own connection, which may come from either driver (Django
4.2+ uses psycopg 3 when it is installed), or Django's ``DatabaseWrapper`` around one. Both
drivers can send several statements in one round trip when the parameters are bound on the
client: psycopg2 always does that, psycopg 3 through a ``ClientCursor`` (its default cursor
binds on the server, where one statement is the limit). psycopg 3 is imported only when a
caller hands over one of its connections.
"""

from __future__ import annotations

import functools
from typing import Any

import attr
import psycopg2
import psycopg2.errors


@attr.s(frozen=True, slots=True)
class Driver:
    """One driver's cursor maker and the errors an enqueue tells apart."""

    cursor = attr.ib()               # (conn) -> a cursor that binds on the client
    error = attr.ib()                # the driver's base exception
    undefined_table = attr.ib()
    missing_pgmq = attr.ib()         # (UndefinedFunction, InvalidSchemaName)


PSYCOPG2 = Driver(cursor=lambda conn: conn.cursor(), error=psycopg2.Error,
                  undefined_table=psycopg2.errors.UndefinedTable,
                  missing_pgmq=(psycopg2.errors.UndefinedFunction,
                                psycopg2.errors.InvalidSchemaName))


@functools.lru_cache(maxsize=None)
def _psycopg3() -> Driver:
    import psycopg
    import psycopg.errors
    return Driver(cursor=psycopg.ClientCursor, error=psycopg.Error,
                  undefined_table=psycopg.errors.UndefinedTable,
                  missing_pgmq=(psycopg.errors.UndefinedFunction,
                                psycopg.errors.InvalidSchemaName))


def driver_of(conn: Any) -> Driver:
    """The driver of ``conn``: psycopg 3 when its class comes from the ``psycopg`` package,
    psycopg2 otherwise (and for anything shaped like a psycopg2 connection)."""
    module = type(conn).__module__
    if module == "psycopg" or module.startswith("psycopg."):
        return _psycopg3()
    return PSYCOPG2


def is_framework_wrapper(conn: Any) -> bool:
    """True for Django's ``DatabaseWrapper`` (``django.db.connection`` is a proxy to one):
    told by its methods, since a project's database engine may subclass it anywhere."""
    return hasattr(conn, "ensure_connection") and hasattr(conn, "wrap_database_errors")


def django_connection(wrapper: Any) -> Any:
    """The driver connection inside Django's ``wrapper``, connected, with Django's checks.

    Django's transaction lives on that connection: inside ``transaction.atomic()`` Django has
    turned the driver's autocommit off, so a statement sent on it joins the block and commits
    or rolls back with it; outside one, Django runs in autocommit, and so does the enqueue.
    The enqueue does not go through ``wrapper.cursor()``: with ``server_side_binding`` that
    cursor binds on the server, which takes one statement per round trip. The checks are the
    ones Django's own cursors make first: no query in a block a failed query broke, a failed
    health check reconnects, and a connection stays with its thread.
    """
    if wrapper.vendor != "postgresql":
        raise TypeError(f"PgEnqueuer needs a PostgreSQL database; Django's database "
                        f"{wrapper.alias!r} is {wrapper.vendor}")
    wrapper.validate_no_broken_transaction()
    wrapper.close_if_health_check_failed()
    wrapper.ensure_connection()
    wrapper.validate_thread_sharing()
    return wrapper.connection
