"""Fixtures: small datasets in the real on-disk layouts."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_folder_tree


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    make_folder_tree(tmp_path, "train", n=3)
    make_folder_tree(tmp_path, "val", n=2, seed=1)
    return tmp_path
