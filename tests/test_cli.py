"""The ``optiscope`` dispatcher finds every package's sub-commands through entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probe.cli import build_parser, main


def test_all_documented_commands_are_registered() -> None:
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("serve", "db", "token", "export", "import", "sync", "demo", "dashboard"):
        assert command in choices, f"optiscope {command} is missing"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_runs_in_a_fresh_interpreter() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "probe.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "serve" in out and "demo" in out
