"""The package, tests, examples and benchmark are `mypy --strict` and
`ruff check` clean (run here so that one test run checks it)."""

from __future__ import annotations

import subprocess
import sys

from conftest import PACKAGE


def tool(name: str) -> list[str]:
    """`python -m NAME` from this interpreter's environment."""
    return [sys.executable, "-m", name]


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [*tool("mypy"), "--strict", "python", "tests", "examples", "bench"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_ruff_check_is_clean() -> None:
    result = subprocess.run(
        [*tool("ruff"), "check", "python", "tests", "examples", "bench"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runtime_needs_websockets_only() -> None:
    """Every third-party import of the package is `websockets`."""
    script = (
        "import sys; sys.path.insert(0, 'python'); import event_router, event_router.agent, "
        "event_router.management; "
        "mods = {m.split('.')[0] for m in sys.modules}; "
        "std = set(sys.stdlib_module_names) | set(sys.builtin_module_names); "
        "print(sorted(m for m in mods - std if not m.startswith('_') and m != 'event_router'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PACKAGE, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['websockets']"
