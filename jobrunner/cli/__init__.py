"""The `jobrunner` command."""
