"""What the `jobrunner` commands share: exit codes, the error that carries one, common flags."""

from jobrunner.process.exits import (EXIT_BOOT, EXIT_ERROR, EXIT_IMPORT, EXIT_NOT_FOUND,
                                     EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE)

__all__ = ["EXIT_BOOT", "EXIT_ERROR", "EXIT_IMPORT", "EXIT_NOT_FOUND", "EXIT_OK",
           "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "connection_flags"]


class CliError(Exception):
    """Ends a command with exit ``code`` and ``message`` on stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def connection_flags(parser, redis: bool = True) -> None:
    """The flags that name the servers, on a command's ``parser``."""
    parser.add_argument("--pg-dsn", help="Postgres DSN (else JOBRUNNER_PG_DSN, DATABASE_URL)")
    if redis:
        parser.add_argument("--redis-url", help="Redis URL (else JOBRUNNER_REDIS_URL, REDIS_URL)")
