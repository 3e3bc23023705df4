"""Packaging: the wheel carries the `event-router` binary next to the
Python package (maturin, `bindings = "bin"`).

The structural checks always run and cost nothing. Building the wheel
compiles the whole crate in release mode (minutes), so it runs only when
`EVENT_ROUTER_BUILD_WHEEL=1` is set; it then installs the wheel into a fresh
venv and runs `event-router --version` and `import event_router` there.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tomllib
import venv
import zipfile

import pytest
from conftest import PACKAGE, ROOT


def pyproject() -> dict[str, object]:
    with open(PACKAGE / "pyproject.toml", "rb") as f:
        config: dict[str, object] = tomllib.load(f)
    return config


def test_pyproject_builds_the_router_binary_into_the_wheel_with_maturin() -> None:
    config = pyproject()
    build = config["build-system"]
    assert isinstance(build, dict)
    assert build["build-backend"] == "maturin"
    project = config["project"]
    assert isinstance(project, dict)
    assert project["name"] == "event-router"
    assert project["dependencies"] == ["websockets>=15"], "websockets is the only dependency"
    maturin = config["tool"]["maturin"]  # type: ignore[index]
    assert maturin["bindings"] == "bin"
    assert maturin["module-name"] == "event_router"
    manifest = (PACKAGE / maturin["manifest-path"]).resolve()
    assert manifest == ROOT / "Cargo.toml"
    with open(manifest, "rb") as f:
        cargo = tomllib.load(f)
    assert cargo["package"]["name"] == "event-router"
    assert [b["name"] for b in cargo["bin"]] == ["event-router"]
    source = PACKAGE / maturin["python-source"] / "event_router"
    assert (source / "__init__.py").is_file()
    assert (source / "py.typed").is_file(), "the package is marked typed"


def test_the_binary_is_found_where_the_wheel_installs_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sysconfig

    from event_router import find_binary

    scripts = tmp_path / "bin"
    scripts.mkdir()
    exe = scripts / "event-router"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.delenv("EVENT_ROUTER_BIN")
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(scripts))
    assert find_binary() == str(exe)


@pytest.mark.skipif(
    os.environ.get("EVENT_ROUTER_BUILD_WHEEL") != "1",
    reason="set EVENT_ROUTER_BUILD_WHEEL=1 to build the wheel (a release build)",
)
def test_the_wheel_installs_the_command_and_the_package(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--out", str(out)],
        cwd=PACKAGE,
        check=True,
        timeout=3600,
    )
    [wheel] = list(out.glob("event_router-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".data/scripts/event-router") for n in names), names
    assert "event_router/__init__.py" in names and "event_router/py.typed" in names
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)
    version = subprocess.run(
        [env / "bin" / "event-router", "--version"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.startswith("event-router ")
    subprocess.run(
        [py, "-c", "import event_router; event_router.find_binary()"],
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "EVENT_ROUTER_BIN"},
    )
