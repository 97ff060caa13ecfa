"""The README's two commands exist where .ci/run looks for them and work."""

from __future__ import annotations

import json
import os
import re
import subprocess

from .conftest import ROOT


def command(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", text, re.S)
    assert match, marker
    return match.group(1)


def test_main_command_sets_up_and_starts_the_service():
    cmd = command("main-command")
    assert "pip install" in cmd and '.[http]' in cmd and cmd.endswith(".venv/bin/tel400-http")
    assert (ROOT / "examples" / "manual.toml").exists()


def test_the_readme_curl_examples_work_against_the_service(tmp_path):
    """Each line of the README's examples, run by bash against ``tel400-http`` on embedded defaults."""
    from .http_harness import ServerProcess

    lines = command("http-examples").splitlines()
    server = ServerProcess(tmp_path).start()
    try:
        outputs = []
        env = {"PATH": os.environ["PATH"]}
        script = []
        for line in lines:
            script.append(line.replace("http://127.0.0.1:8400", server.url))
            if not line.startswith("curl"):
                continue
            done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + "\n".join(script)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, (line, done.stderr)
            outputs.append(done.stdout)
            script = [s for s in script if not s.startswith("curl")]  # keep the assignments
    finally:
        server.stop()
    route, conference, end, plan, blacklist, _pin, report, dialplan, rtjson, metrics = outputs
    decision = json.loads(route)  # routed now: open or closed by the hour in Beijing
    assert (decision["number"], decision["province"]) == ("4001012345", "CN-BJ")
    assert decision["reason"] in ("ok", "closed") and decision["targets"] in ([], ["13901010001"])
    assert json.loads(conference)["action"] == "conference"
    assert json.loads(end)["billed_s"] == 180
    assert json.loads(plan)["number"] == "4001012345"
    assert "13912345678" in json.loads(blacklist)["blacklist"]
    assert json.loads(report)["calls"] >= 1
    assert '<document type="freeswitch/xml">' in dialplan and 'expression="^4001012345$"' in dialplan
    assert json.loads(rtjson)["version"] == "1.0"
    assert 'tel400_decisions_total{action="conference",number="4001532532",reason="ok"} 1.0' in metrics


def test_test_command_installs_test_extras_and_runs_pytest():
    cmd = command("test-command")
    assert '.[test]' in cmd and "pytest" in cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and 'eval "$test_command"' in ci
