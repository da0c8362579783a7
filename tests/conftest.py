"""Shared pytest fixtures.

Real QEMU 7.2 tools are the oracle.  A test that needs one asks ``require_tool``:
on a developer machine without QEMU the test is skipped, but in CI (``CI=true``)
it fails, so a missing install can never turn the oracle checks green.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Return the path of a real QEMU tool, or skip (fail in CI) when missing."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI (install qemu-utils/qemu-system-common)")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
def qemu_img() -> str:
    return require_tool("qemu-img")


@pytest.fixture
def qemu_io() -> str:
    return require_tool("qemu-io")


@pytest.fixture
def qsd() -> str:
    return require_tool("qemu-storage-daemon")
