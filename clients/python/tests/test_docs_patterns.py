"""Every `# example: NAME` program of docs/patterns.md runs to completion
(starting the bundled router itself) and prints what the doc promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest
from conftest import PACKAGE, ROOT, router_binary

DOC = ROOT / "docs" / "patterns.md"
BLOCK = re.compile(r"```python\n# example: (\w+)\n(.*?)```", re.S)

EXPECTED = {
    "event_sourcing": [
        "conflict: stream is at version 2",
        "read model: version 3 order.shipped",
        "Version 1: order.created",
        "Version 3: order.shipped",
    ],
    "saga": [
        "compensate: release inventory of 2",
        "order 1: completed after ['start', 'inventory_reserved', 'payment_completed']",
        "order 2: compensated after ['start', 'inventory_reserved', 'handle_failure']",
    ],
    "circuit_breaker": [
        "breaker open after 3 failures",
        "called the API for request 1",
        "breaker closed",
    ],
    "windows": [
        "window 11:59:30 +60s: 2 events, avg 15.0",
        "window 12:00:00 +60s: 3 events, avg 20.0",
        "window 12:00:30 +60s: 2 events, avg 35.0",
        "window 12:01:00 +60s: 2 events, avg 45.0",
    ],
    "encryption": [
        "decrypted: {'ssn': '123-45-6789'}",
        "router sees: ['ciphertext', 'nonce'] aes-256-gcm",
        "wrong key: decryption_failed",
    ],
}


def examples() -> dict[str, str]:
    return dict(BLOCK.findall(DOC.read_text()))


def test_the_doc_has_one_example_per_pattern() -> None:
    assert sorted(examples()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_what_the_doc_says(name: str) -> None:
    code = examples()[name]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE / "python")
    env["EVENT_ROUTER_BIN"] = router_binary()
    env.pop("EVENT_ROUTER_URL", None)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        result = subprocess.run(
            [sys.executable, f.name], capture_output=True, text=True, timeout=80, env=env
        )
    finally:
        os.unlink(f.name)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for want in EXPECTED[name]:
        assert want in lines, f"{want!r} not in:\n{result.stdout}"
