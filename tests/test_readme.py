"""The README's two commands exist where .ci/run looks for them and work."""

from __future__ import annotations

import re

from .conftest import ROOT


def command(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", text, re.S)
    assert match, marker
    return match.group(1)


def test_main_command_sets_up_and_runs_the_simulation():
    cmd = command("main-command")
    assert "pip install" in cmd and "tel400 simulate examples/manual.toml" in cmd
    assert (ROOT / "examples" / "manual.toml").exists()


def test_test_command_installs_test_extras_and_runs_pytest():
    cmd = command("test-command")
    assert '.[test]' in cmd and "pytest" in cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and 'eval "$test_command"' in ci
