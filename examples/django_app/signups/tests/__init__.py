"""The example's tests, on real Postgres and Redis; test_supervised runs `manage.py jobrunner`."""
