"""Fixtures of the unit tier."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other users can reach (pytest's tmp_path is root's only), for
    scripts run as a notebook user or an arbitrary uid."""
    path = Path(tempfile.mkdtemp(prefix="aicoe-unit-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)
