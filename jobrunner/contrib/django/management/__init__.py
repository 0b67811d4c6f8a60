"""The management commands of jobrunner's Django app."""
