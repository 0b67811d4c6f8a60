"""The example app: signups that enqueue a jobrunner Worker, and reports run as Django Tasks."""
