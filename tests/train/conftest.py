"""Fixtures of the training tests (helpers live in trainkit.py)."""
import pytest

from trainkit import make_scenes


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"))
