"""Make once, then reuse, the virtualenvs the example's tests run in (under .venvs/).

    python examples/django_app/venvs.py          # make or refresh both; print their paths

``django6``: Python 3.12+ with Django 6, psycopg 3 and this repository installed editable.
``django52``: Python 3.11 with Django 5.2, the django-tasks backport and psycopg2 only (this
repository editable without its dependencies, which would bring psycopg 3 along), so that
Django takes its psycopg2 path. A venv is made again when its packages, this repository's
``install_requires`` or its place change; ``.ci/run`` makes them before the tests.
"""

import configparser
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLACE = os.path.join(HERE, ".venvs")

SPECS = {
    "django6": {
        "pythons": ("3.12", "3.13"),
        "packages": ["Django>=6.0,<7", "psycopg[binary]>=3.1.8", "redis>=4.2", "attrs>=21.3",
                     "croniter>=1.3", "flask>=2"],
        "with_deps": True,
        "driver": "psycopg",
    },
    "django52": {
        "pythons": ("3.11",),
        "packages": ["Django>=5.2,<6", "django-tasks>=0.12", "psycopg2-binary>=2.9",
                     "redis>=4.2", "attrs>=21.3", "croniter>=1.3", "setproctitle>=1.2",
                     "flask>=2"],
        "with_deps": False,
        "driver": "psycopg2",
    },
}


def ensure(name):
    """The Python of venv ``name``, made first if it is missing or out of date."""
    spec = SPECS[name]
    path = os.path.join(PLACE, name)
    python = os.path.join(path, "bin", "python")
    os.makedirs(PLACE, exist_ok=True)
    with open(os.path.join(PLACE, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # one maker at a time; the others reuse it
        base = find_python(spec["pythons"])
        stamp = _stamp(spec, base)
        if _read_stamp(path) != stamp:
            _make(path, base, spec)
            with open(os.path.join(path, "stamp.json"), "w") as handle:
                json.dump(stamp, handle)
    return python


def find_python(versions):
    """An interpreter of one of ``versions``: on PATH, or one pyenv has installed."""
    for version in versions:
        if sys.version_info[:2] == tuple(int(part) for part in version.split(".")):
            return sys.executable
        candidates = [shutil.which(f"python{version}")]
        root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
        candidates += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin",
                                                    f"python{version}")), reverse=True)
        for candidate in filter(None, candidates):
            if _reports(candidate, version):
                return candidate
    raise RuntimeError(f"no Python {' or '.join(versions)} found on PATH or in pyenv")


def _reports(python, version):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def _stamp(spec, base):
    """What a venv was made from: when any of it changes, it is made again."""
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    requires = setup.get("options", "install_requires", fallback="")
    return {"python": os.path.realpath(base), "packages": spec["packages"],
            "with_deps": spec["with_deps"], "root": ROOT,
            "install_requires": hashlib.sha256(requires.encode()).hexdigest()}


def _read_stamp(path):
    try:
        with open(os.path.join(path, "stamp.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _make(path, base, spec):
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([base, "-m", "venv", path], check=True)
    pip = [os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    subprocess.run(pip + spec["packages"], check=True)
    subprocess.run(pip + ["-e", ROOT] + ([] if spec["with_deps"] else ["--no-deps"]),
                   check=True)


if __name__ == "__main__":
    for venv in (sys.argv[1:] or SPECS):
        print(f"{venv}: {ensure(venv)}")
