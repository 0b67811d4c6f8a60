"""``manage.py jobrunner``."""
