"""The console entry point ``tf-xmr <command>`` runs the same code as the top-level scripts."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tf_xmr import cli


def _tf_xmr(*args):
    # The installed console script when the README's install ran (pip install -e .); the same function otherwise.
    exe = shutil.which("tf-xmr")
    command = [exe, *args] if exe else [sys.executable, "-m", "tf_xmr.cli", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_scripts_and_console_commands_share_their_main():
    import importlib

    for name in ("train", "evaluate", "tune"):
        with open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8") as handle:
            script = handle.read()
        assert f"from tf_xmr.commands.{name} import main" in script
        assert cli.COMMANDS[name][0] == f"tf_xmr.commands.{name}"
    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_help_lists_every_command():
    result = _tf_xmr("--help")
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert f"  {name}" in result.stdout


@pytest.mark.parametrize("args, culprit", [
    (("nope",), "unknown command 'nope'"),
    (("train", "--config", "configs/no_such.yaml"), "configs/no_such.yaml"),
])
def test_bad_command_is_one_line_and_exit_2(args, culprit):
    result = _tf_xmr(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], result.stderr
