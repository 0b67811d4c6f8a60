"""The package's shape: imports form no cycle, and only backends/ knows a backend's driver."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobrunner")
DRIVERS = ("psycopg2", "psycopg", "redis", "hiredis")


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _imports(path, modules=()):
    """Every module ``path`` imports, at the top or inside a function. ``from a import b``
    counts as importing ``a.b`` when that is a module in ``modules``, else ``a``."""
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            yield from names
            if not all(name in modules for name in names):
                yield node.module


def _graph():
    modules = _modules()
    return {name: {target for target in _imports(path, modules)
                   if target in modules and target != name}
            for name, path in modules.items()}


def test_no_relative_imports():
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            assert not (isinstance(node, ast.ImportFrom) and node.level), name


def test_the_imports_form_no_cycle():
    graph = _graph()
    done, on_path = set(), []

    def visit(module):
        if module in on_path:
            cycle = on_path[on_path.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        on_path.append(module)
        for target in sorted(graph[module]):
            # importing a.b.c also imports package a.b; such edges are not arrows of ours
            if not module.startswith(target + "."):
                visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


#: The layers, highest first: a module may import its own layer and the ones below it.
LAYERS = ("jobrunner.cli", "jobrunner.web", "jobrunner.ops", "jobrunner.process",
          "jobrunner.backends")


#: Integrations with frameworks, built on the facade (``jobrunner.PgEnqueuer``) and on the
#: command's code: above everything, and nothing of jobrunner's own imports them.
INTEGRATIONS = ("jobrunner.contrib",)


def _layer(module):
    """0 for the model (jobrunner's own modules), up to 5 for cli; the facade is above those,
    and the integrations above the facade."""
    if any(module == prefix or module.startswith(prefix + ".") for prefix in INTEGRATIONS):
        return len(LAYERS) + 2
    if module in ("jobrunner", "jobrunner.__main__"):
        return len(LAYERS) + 1
    for depth, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return len(LAYERS) - depth
    return 0


def test_imports_run_one_way_cli_ops_process_backends_model():
    upward = [(module, target) for module, targets in _graph().items() for target in targets
              if _layer(target) > _layer(module)]
    assert upward == []


def test_only_backends_import_a_driver_or_a_backend_module():
    for name, path in _modules().items():
        # the package's own __init__ is the public facade: jobrunner.PgEnqueuer and
        # jobrunner.SidekiqEnqueuer are the contract, loaded there on first use
        if name.startswith("jobrunner.backends") or name == "jobrunner":
            continue
        for target in _imports(path):
            assert target.split(".")[0] not in DRIVERS, f"{name} imports {target}"
            parts = target.split(".")
            if parts[:2] == ["jobrunner", "backends"] and len(parts) > 2:
                # the catalogue (make_backend, NAMES) and the interface are for everyone
                assert parts[2] in ("base", "inspector") or target in (
                    "jobrunner.backends.make_backend", "jobrunner.backends.NAMES",
                    "jobrunner.backends.connection_errors"), \
                    f"{name} imports {target}"


def test_every_module_stays_under_400_lines():
    long = {name: lines for name, path in _modules().items()
            if (lines := sum(1 for _ in open(path))) >= 400}
    assert long == {}
