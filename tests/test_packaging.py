"""The Dockerfile and pyproject agree: what the image installs and runs is what the package provides."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from receiver.auth import build_authenticator
from receiver.settings import parse_settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(f"{name} ")]


def test_command_is_the_packaged_console_script() -> None:
    [cmd] = instructions("CMD")
    argv = json.loads(cmd)
    assert argv[0] in PYPROJECT["project"]["scripts"]
    assert argv[1:] == ["serve"]


def test_copied_sources_exist_and_cover_the_packages() -> None:
    copied = [source for args in instructions("COPY") for source in args.split()[:-1]]
    for source in copied:
        assert (REPO / source).exists(), source
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied


def test_installs_the_package_and_runs_unprivileged() -> None:
    assert any(re.search(r"pip install .*\s\.(\s|$)", run) for run in instructions("RUN"))
    [user] = instructions("USER")
    assert user.strip() not in ("root", "0")
    assert instructions("VOLUME") and instructions("EXPOSE") == ["8080"]
    assert "/healthz" in instructions("HEALTHCHECK")[0]


def test_container_config_is_valid_and_on_the_volume() -> None:
    [env] = [e for e in instructions("ENV") if "JOBHOOK_CONFIG" in e]
    config_path = re.search(r"JOBHOOK_CONFIG=(\S+)", env)
    assert config_path is not None
    local = REPO / config_path.group(1).removeprefix("/app/")
    settings = parse_settings(local.read_text(), {"JOBHOOK_SECRET": "whsec_" + "QUJD" * 8})
    assert settings.database.url == "sqlite:////data/jobhook.db"
    assert settings.server.host == "0.0.0.0" and settings.auth.mode == "standard-webhooks"
    _, problems = build_authenticator(settings)
    assert problems == []  # all interfaces, so only with authentication
    assert "/data" in instructions("VOLUME")[0]


@pytest.mark.slow
def test_the_wheel_ships_the_dashboard_templates(tmp_path: Path) -> None:
    """`pip install .` (and the image) must carry the templates, not only an editable checkout."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("jobhook-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("receiver/dashboard/templates/")}
    templates = {f"receiver/dashboard/templates/{p.name}" for p in (REPO / "receiver/dashboard/templates").iterdir()}
    assert shipped == templates and len(templates) >= 5
