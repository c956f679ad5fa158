"""The commands around the tests, in process (what they would start is recorded, never run):
``bootstrap.py serve`` installs the project alone, ``bootstrap.py test`` the project with
its test tools, each only when missing; ``bench/run.py --list`` installs nothing;
``scripts/load.py`` runs the load tests (marked ``soak``) at the size asked for."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import bootstrap
from bench import deps
from bench import run as bench_run
from scripts import load
from tests.support import ROOT, load_size


@pytest.fixture
def pip_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """bootstrap.py aimed at a copy of pyproject.toml in ``tmp_path``; its pip commands are recorded."""
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    venv = tmp_path / ".venv"
    python = venv / "bin" / "python"
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)
    monkeypatch.setattr(bootstrap, "VENV", venv)
    monkeypatch.setattr(bootstrap, "PYTHON", python)

    class EnvBuilder:
        def __init__(self, **options: object) -> None:
            assert options == {"with_pip": True}

        def create(self, path: Path) -> None:
            assert path == venv
            python.parent.mkdir(parents=True)
            python.touch()

    calls: list[list[str]] = []

    def run(command: list[str], check: bool) -> None:
        assert check
        calls.append(command[command.index("install") + 1:])

    monkeypatch.setattr(bootstrap.venv, "EnvBuilder", EnvBuilder)
    monkeypatch.setattr(bootstrap.subprocess, "run", run)
    return calls


def test_serve_installs_the_project_alone_and_test_adds_the_tools(
    pip_calls: list[list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    quiet = ["--quiet", "--disable-pip-version-check"]
    bootstrap.ensure_environment(bootstrap.EXTRAS["serve"])
    assert pip_calls == [[*quiet, "--upgrade", "pip"], [*quiet, "--editable", str(tmp_path)]]
    assert capsys.readouterr().out == "bootstrap: creating .venv\nbootstrap: installing the project into .venv\n"
    bootstrap.ensure_environment(bootstrap.EXTRAS["serve"])  # installed: nothing to do
    assert len(pip_calls) == 2

    bootstrap.ensure_environment(bootstrap.EXTRAS["test"])  # the test tools are missing
    assert pip_calls[2:] == [[*quiet, "--upgrade", "pip"], [*quiet, "--editable", f"{tmp_path}[granian,test,docs]"]]
    assert capsys.readouterr().out == "bootstrap: installing the project and its test tools into .venv\n"
    for command in ("serve", "test"):  # both find what they need
        bootstrap.ensure_environment(bootstrap.EXTRAS[command])
    assert len(pip_calls) == 4

    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text() + "\n# changed\n")
    bootstrap.ensure_environment(bootstrap.EXTRAS["serve"])  # a new pyproject.toml: installed again
    assert pip_calls[-1] == [*quiet, "--editable", str(tmp_path)]
    bootstrap.ensure_environment(bootstrap.EXTRAS["test"])
    assert pip_calls[-1] == [*quiet, "--editable", f"{tmp_path}[granian,test,docs]"]
    assert len(pip_calls) == 8


def test_an_older_stamp_without_extras_installs_the_test_tools_once(pip_calls: list[list[str]],
                                                                   tmp_path: Path) -> None:
    """The stamp bootstrap.py wrote before it knew extras: the digest alone."""
    bootstrap.ensure_environment(bootstrap.EXTRAS["serve"])
    stamp = tmp_path / ".venv" / ".installed"
    assert stamp.read_text() == stamp.read_text().split()[0]  # "<digest>": no extras
    bootstrap.ensure_environment(bootstrap.EXTRAS["test"])
    assert stamp.read_text().split() == [stamp.read_text().split()[0], "granian,test,docs"]
    assert len(pip_calls) == 4


def test_main_installs_what_its_command_needs(pip_calls: list[list[str]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(bootstrap.os, "execv", lambda path, args: started.append(args))
    monkeypatch.setattr(bootstrap.os, "chdir", lambda path: None)
    monkeypatch.setattr(sys, "argv", ["bootstrap.py", "serve", "--port", "9000"])
    bootstrap.main()
    assert pip_calls[-1][-1] == str(tmp_path)
    assert started == [[str(tmp_path / ".venv" / "bin" / "python"), "-m", "gateway", "serve", "--port", "9000"]]


def test_bench_list_installs_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    installed: list[str] = []
    monkeypatch.setattr(deps, "ensure_python_deps", lambda: installed.append("python"))
    monkeypatch.setattr(deps, "ensure_wrk", lambda: installed.append("wrk"))
    bench_run.main(["--list"])
    listed = capsys.readouterr().out.splitlines()
    assert installed == []
    keys = [line.split()[0] for line in listed]
    assert {"gateway-uvicorn", "footprint"} <= set(keys), listed
    assert len(keys) == len(set(keys)) > 10, listed


def test_load_runs_the_experiments_at_full_size(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[list[str], str]] = []

    class Done:
        returncode = 3

    def run(command: list[str], cwd: Path, env: dict[str, str]) -> Done:
        assert cwd == ROOT
        started.append((command, env["GATEWAY_LOAD_SIZE"]))
        return Done()

    monkeypatch.setattr(load.subprocess, "run", run)
    assert load.main(["netns", "writes"]) == 3  # pytest's exit status
    pytest_args = [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "-m", "soak"]
    assert started == [([*pytest_args, "tests/system/test_netns.py",
                         "tests/system/test_sqlite_writes.py::test_16_concurrent_admin_writers_on_2_workers"], "full")]
    load.main(["--size", "ci"])
    assert started[-1] == ([*pytest_args, *(test for test, _ in load.EXPERIMENTS.values())], "ci")
    with pytest.raises(SystemExit):
        load.main(["nets"])
    assert len(started) == 2


@pytest.mark.parametrize("name", sorted(load.EXPERIMENTS))
def test_each_experiment_is_a_load_test(name: str) -> None:
    """Its test exists and is marked soak, so that -m soak (the script's, and .ci/run's
    load tier) selects it."""
    path, _, function = load.EXPERIMENTS[name][0].partition("::")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    marks = []
    for holder in (module, getattr(module, function, None)):
        found = getattr(holder, "pytestmark", [])
        marks += [m.name for m in (found if isinstance(found, list) else [found])]
    assert "soak" in marks and "server" in marks, marks


def test_load_size_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_LOAD_SIZE", raising=False)
    assert load_size(ci=2, full=7) == 2
    monkeypatch.setenv("GATEWAY_LOAD_SIZE", "full")
    assert load_size(ci=2, full=7) == 7
    monkeypatch.setenv("GATEWAY_LOAD_SIZE", "huge")
    message = r'^GATEWAY_LOAD_SIZE="huge" is not a size of the load tests: use ci or full\.$'
    with pytest.raises(ValueError, match=message):
        load_size(ci=2, full=7)


def test_mutate_aims_mutmut_at_one_module_and_its_tests_and_a_marker_replaces_not_server() -> None:
    from scripts import mutate

    text = ('[tool.mutmut]\nonly_mutate = ["gateway/core/pipeline.py"]\n'
            'pytest_add_cli_args = ["-m", "not server", "-p", "no:cacheprovider", "-q"]\n'
            'pytest_add_cli_args_test_selection = ["tests/"]\n')
    aimed = mutate.configured(text, "gateway/methods.py", ["tests/unit/test_x.py"])
    assert aimed == text.replace("gateway/core/pipeline.py", "gateway/methods.py").replace(
        '["tests/"]', '["tests/unit/test_x.py"]')
    marked = mutate.configured(text, "gateway/methods.py", ["tests/unit/test_x.py"], "not soak")
    assert marked == aimed.replace('"not server"', '"not soak"')
    with pytest.raises(SystemExit, match=r"pyproject.toml has 0 lines 'only_mutate = \.\.\.'"):
        mutate.configured("[tool.mutmut]\n", "gateway/methods.py", [])
