"""The `flywheel` command line: --version, help on every option (subcommands' own parsers too), and
a wrong configuration said in one line naming the key, never a traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from flywheel import cli

# What needs no help line of its own: argparse's -h and the subcommand chooser (each choice has one).
SELF_EXPLAINED = (argparse._HelpAction, argparse._SubParsersAction)


def walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += walk(sub)
    return found


def parsers_reached(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[argparse.ArgumentParser]:
    """Every parser `flywheel ARGV` parses with (the subcommands' own: token, each bench suite),
    recorded as `--help` passes through them to the one that prints it and exits."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def spy(self: argparse.ArgumentParser, args: object = None, namespace: object = None) -> object:
        seen.append(self)
        return original(self, args, namespace)  # type: ignore[arg-type]

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", spy)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 0, f"flywheel {' '.join(argv)} did not end in its help"
    return [found for parser in seen for found in walk(parser)]


def test_every_option_of_every_command_has_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    parsers = walk(cli.build_parser())
    bench = next(p for p in parsers if p.prog == "flywheel bench")
    suites = next(a for a in bench._actions if a.dest == "suite").choices
    assert suites and "lsp" in suites
    for argv in [["token", "create", "--help"], *(["bench", suite, "--help"] for suite in suites)]:
        parsers += parsers_reached(argv, monkeypatch)
    missing = sorted(
        {
            f"{parser.prog}: {'/'.join(action.option_strings) or action.dest}"
            for parser in parsers
            for action in parser._actions
            if not isinstance(action, SELF_EXPLAINED) and not (action.help or "").strip()
        }
    )
    assert not missing, "options without help:\n" + "\n".join(missing)
    progs = {p.prog for p in parsers}
    # The subcommands' own parsers were reached, not only ours.
    assert {"flywheel up", "flywheel token create", "flywheel bench build-model"} <= progs
    assert sum(p.prog == "flywheel bench lsp" for p in parsers) >= 2  # the report's and the suite's


def run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, FLYWHEEL_DATA_DIR=str(tmp_path / "state"), **env)
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *argv],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    done = run(["--version"], tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"flywheel {metadata.version('flywheel')}"


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        ('[backend]\nport = "abc"\n', 'flywheel: {path}: backend.port: expected an integer, got "abc"'),
        ("[backend]\nprot = 1\n", "flywheel: {path}: unknown key backend.prot (did you mean backend.port?)"),
        ("[backend\n", "flywheel: {path}: not valid TOML: "),
    ],
)
def test_a_wrong_configuration_is_one_line_naming_the_key(tmp_path: Path, toml: str, line: str) -> None:
    path = tmp_path / "flywheel.toml"
    path.write_text(toml)
    done = run(["token", "list"], tmp_path, FLYWHEEL_CONFIG=str(path))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(line.format(path=path)), done.stderr


def test_lsp_takes_the_stdio_flag_clients_pass() -> None:
    # vscode-languageclient's stdio transport and many other clients start the server with --stdio.
    args = cli.build_parser().parse_args(["lsp", "--stdio"])
    assert args.func is cli.cmd_lsp
