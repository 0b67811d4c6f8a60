"""Print what the local Postgres and Redis hold, so that CI can check the tests left it as found.

    python .ci/local_state.py > before.json; ...; python .ci/local_state.py | diff before.json -

Per Redis database: its keys. On Postgres: the databases, and per database the user tables,
schemas and extensions of the databases a user keeps (test, root, postgres).
"""

import json

import psycopg2
import redis

PG = "postgresql://127.0.0.1:5432/"
DATABASES = ("test", "root", "postgres")


def redis_state():
    state = {}
    for db in range(16):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        keys = sorted(key.decode(errors="replace") for key in client.scan_iter(count=1000))
        client.close()
        if keys:
            state[db] = keys
    return state


def pg_state():
    conn = psycopg2.connect(PG + "postgres")
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database ORDER BY 1")
        state = {"databases": [row[0] for row in cur.fetchall()]}
    conn.close()
    for name in DATABASES:
        if name not in state["databases"]:
            continue
        conn = psycopg2.connect(PG + name)
        with conn.cursor() as cur:
            cur.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                        " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1")
            relations = [row[0] for row in cur.fetchall()]
            cur.execute("SELECT nspname FROM pg_namespace ORDER BY 1")
            schemas = [row[0] for row in cur.fetchall()]
            cur.execute("SELECT extname FROM pg_extension ORDER BY 1")
            extensions = [row[0] for row in cur.fetchall()]
        conn.close()
        state[name] = {"relations": relations, "schemas": schemas, "extensions": extensions}
    return state


if __name__ == "__main__":
    print(json.dumps({"redis": redis_state(), "postgres": pg_state()}, indent=1, sort_keys=True))
