"""The examples run to completion against a real router (or the local one
they start) and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import PACKAGE, Router


def run(script: str, *args: str, url: str | None = None) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE / "python")
    env.pop("EVENT_ROUTER_URL", None)
    if url is not None:
        env["EVENT_ROUTER_URL"] = url
    result = subprocess.run(
        [sys.executable, str(PACKAGE / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_request_response_example() -> None:
    out = run("request_response.py")
    assert "Result: 30" in out
    assert "Refused: x and y must be numbers" in out


def test_two_agents_example() -> None:
    out = run("two_agents.py")
    assert "workflow 1: approved" in out
    assert "workflow 2: review needed: uses eval" in out


def test_durable_worker_example_redelivers_a_failed_task() -> None:
    out = run("durable_worker.py", "--count", "3")
    assert "task 1 done (attempt 2)" in out, out
    assert {"task 0 done (attempt 1)", "task 2 done (attempt 1)"} <= set(out.splitlines())


@pytest.mark.parametrize("patterns", [["#"], ["demo.*"]])
def test_monitor_example_prints_events_and_stats(router: Router, patterns: list[str]) -> None:
    import threading
    import time
    import urllib.request

    def publish_soon() -> None:
        time.sleep(1.0)
        body = b'{"type":"demo.hello","payload":{"n":1}}'
        request = urllib.request.Request(
            router.http_url + "/api/v1/events",
            data=body,
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).read()

    publisher = threading.Thread(target=publish_soon)
    publisher.start()
    out = run("monitor.py", *patterns, "--seconds", "2.5", "--every", "1", url=router.ws_url)
    publisher.join()
    assert 'demo.hello p5 {"n": 1}' in out
    assert "-- published " in out
