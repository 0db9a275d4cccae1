"""The linter (ruff) and the import contracts (import-linter), both configured in pyproject.toml.

Run as tests so the README's one test command, and so CI, checks them. Each prints what it found.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGE_NAME = "comfyui_codeformer"  # [tool.importlinter] root_package in pyproject.toml


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it is in the 'test' extra (pip install -e '.[test]')")
    return path


def test_ruff_finds_nothing():
    done = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_contracts_hold(tmp_path):
    # The repository is a ComfyUI package whose nodes import the core relatively; import-linter
    # needs it importable under one name, so link it into a folder of its own.
    (tmp_path / PACKAGE_NAME).symlink_to(ROOT, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([_tool("lint-imports"), "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert " broken" in out and "0 broken" in out, out  # the contracts ran (a config error exits 1)
