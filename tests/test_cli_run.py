"""`jobrunner run MODULE:ATTR` when the target is wrong: what it says, and exit code 3.

Each test writes the app's modules to a folder of its own and runs the real CLI there; the
command stops before it forks or connects to anything.
"""

import re

import pytest

from helpers import CliProcess

REGISTRY_APP = "import jobrunner\n\nregistry = jobrunner.Registry()\n\n\ndef helper():\n    pass\n"


def run(tmp_path, target, **modules):
    """Write ``modules`` (name -> source) to ``tmp_path``, run ``jobrunner run target`` there;
    its exit code and its output lines."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    cli = CliProcess(["run", target], {}, str(tmp_path / "cli.log"), app_dir=str(tmp_path))
    try:
        code = cli.wait(60)
    finally:
        cli.stop()
    return code, cli.output().splitlines()


def test_a_mistyped_attribute_is_called_missing_and_the_registries_are_listed(tmp_path):
    code, lines = run(tmp_path, "jobs_app:registri", jobs_app=REGISTRY_APP)
    assert code == 3
    assert lines == ["jobrunner: module 'jobs_app' has no attribute 'registri'; the module's "
                     "Registry objects: jobs_app:registry"]


def test_a_missing_attribute_in_a_module_without_a_registry_says_so(tmp_path):
    code, lines = run(tmp_path, "jobs_app:registry", jobs_app="import jobrunner\nx = 1\n")
    assert code == 3
    assert lines == ["jobrunner: module 'jobs_app' has no attribute 'registry'; the module has "
                     "no Registry object"]


@pytest.mark.parametrize("attribute, shown", [("helper", "<function helper at 0x"),
                                              ("jobrunner", "<module 'jobrunner' from ")])
def test_an_attribute_that_is_not_a_registry_says_what_it_is(tmp_path, attribute, shown):
    code, lines = run(tmp_path, f"jobs_app:{attribute}", jobs_app=REGISTRY_APP)
    assert code == 3
    (line,) = lines
    assert line.startswith(f"jobrunner: jobs_app:{attribute} is {shown}"), line
    assert line.endswith(", not a jobrunner.Registry; the module's Registry objects: "
                         "jobs_app:registry"), line


def test_an_import_error_shows_the_apps_traceback_from_its_first_frame(tmp_path):
    code, lines = run(tmp_path, "jobs_app:registry",
                      jobs_app="import jobrunner\nimport settings_mod\n\nregistry = 1\n",
                      settings_mod="import os\n\n\ndef secret():\n    return {}['SECRET_KEY']\n"
                                   "\n\nSECRET = secret()\n")
    assert code == 3
    assert lines[0] == "jobrunner: cannot import 'jobs_app': KeyError: 'SECRET_KEY'"
    assert lines[1] == "Traceback (most recent call last):"
    frames = [re.sub(r'File ".*/', 'File "', line.strip()) for line in lines
              if line.strip().startswith("File ")]
    # the app's frames, down to the line that raised; not the CLI's, nor the import system's
    assert frames == ['File "jobs_app.py", line 2, in <module>',
                      'File "settings_mod.py", line 8, in <module>',
                      'File "settings_mod.py", line 5, in secret'], lines
    assert "return {}['SECRET_KEY']" in [line.strip() for line in lines]
    assert lines[-1] == "KeyError: 'SECRET_KEY'"


def test_a_syntax_error_shows_where_it_is(tmp_path):
    code, lines = run(tmp_path, "jobs_app:registry", jobs_app="import jobrunner\n\ndef f(:\n")
    assert code == 3
    assert lines[0].startswith("jobrunner: cannot import 'jobs_app': SyntaxError: ")
    assert lines[1].strip().endswith('jobs_app.py", line 3') and lines[2].strip() == "def f(:"
    assert lines[-1].startswith("SyntaxError: ")


def test_a_module_that_is_not_there_is_one_line(tmp_path):
    code, lines = run(tmp_path, "no_such_app:registry")
    assert code == 3
    assert lines == ["jobrunner: cannot import 'no_such_app': ModuleNotFoundError: No module "
                     "named 'no_such_app'"]
