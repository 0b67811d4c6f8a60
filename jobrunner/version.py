"""The version of jobrunner, in one place (the package, the CLI and setup.cfg read it)."""

__version__ = "0.1.0"
