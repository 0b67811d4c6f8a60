"""The public API and the backend interface are typed (the package ships ``py.typed``), and the
hints agree with the code: every public function is annotated, and mypy passes on them."""

import ast
import configparser
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jobrunner")

#: The typed modules: the public facade and model, the backend interface and catalogue, the
#: memory backend (the reference implementation of the interface) and the public supervisor
#: and operator logic. Paths relative to the repository root.
TYPED = [
    "jobrunner/__init__.py",
    "jobrunner/config.py",
    "jobrunner/errors.py",
    "jobrunner/job.py",
    "jobrunner/lifecycle.py",
    "jobrunner/log.py",
    "jobrunner/middleware.py",
    "jobrunner/registry.py",
    "jobrunner/retry.py",
    "jobrunner/schedule.py",
    "jobrunner/sentinel_url.py",
    "jobrunner/testing.py",
    "jobrunner/worker.py",
    "jobrunner/backends/__init__.py",
    "jobrunner/backends/base.py",
    "jobrunner/backends/inspector.py",
    "jobrunner/contrib/opentelemetry.py",
    *sorted(f"jobrunner/backends/memory/{name}"
            for name in os.listdir(os.path.join(PACKAGE, "backends", "memory"))
            if name.endswith(".py")),
    "jobrunner/backends/listing.py",
    "jobrunner/backends/paused.py",
    "jobrunner/backends/queue_order.py",
    "jobrunner/backends/pgmq/survey.py",
    "jobrunner/ops/admin.py",
    "jobrunner/ops/control.py",
    "jobrunner/ops/jobs.py",
    "jobrunner/ops/supervisor.py",
]


def _public_functions(tree):
    """``(qualified name, node, is_method)`` of every function at module level or in a class
    body (nested classes too) whose name is public or ``__init__``; functions defined inside
    functions are local, not API."""
    def walk(body, prefix, in_class):
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not node.name.startswith("_") or node.name == "__init__":
                    yield prefix + node.name, node, in_class
            elif isinstance(node, ast.If):    # `if TYPE_CHECKING:` and the like
                yield from walk(node.body + node.orelse, prefix, in_class)
    yield from walk(tree.body, "", False)


def _missing(node, is_method):
    """What ``node`` lacks: the names of unannotated parameters, and "return"."""
    args = node.args
    positional = args.posonlyargs + args.args
    decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
    if is_method and "staticmethod" not in decorators and positional:
        positional = positional[1:]               # self or cls
    params = positional + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    missing = [a.arg for a in params if a.annotation is None]
    if node.returns is None and node.name != "__init__":
        missing.append("return")
    return missing


def test_the_typed_modules_exist():
    absent = [path for path in TYPED if not os.path.isfile(os.path.join(ROOT, path))]
    assert absent == []


def test_every_public_function_of_the_typed_modules_is_annotated():
    offenders = []
    for path in TYPED:
        with open(os.path.join(ROOT, path)) as source:
            tree = ast.parse(source.read(), path)
        for name, node, is_method in _public_functions(tree):
            missing = _missing(node, is_method)
            if missing:
                offenders.append(f"{path}:{node.lineno}:{name} ({', '.join(missing)})")
    assert offenders == [], "unannotated public functions:\n" + "\n".join(offenders)


def test_the_package_ships_py_typed():
    assert os.path.isfile(os.path.join(PACKAGE, "py.typed"))
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    assert "py.typed" in setup.get("options.package_data", "jobrunner", fallback="").split()


def test_mypy_passes_on_the_typed_modules(tmp_path):
    # mypy is in the dev extra; without it this fails rather than skips: the hints go unchecked
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
               # 3.10 is the oldest mypy targets; the package's files keep 3.9 working by
               # `from __future__ import annotations`, so hints are never evaluated at run time
               "--python-version", "3.10", "--cache-dir", str(tmp_path / "mypy-cache"), *TYPED]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{' '.join(command[1:])} exited {result.returncode}:\n{result.stdout}{result.stderr}")
