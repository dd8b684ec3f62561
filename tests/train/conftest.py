"""Fixtures of the training tests (helpers live in tests/helpers.py)."""
import pytest

from helpers import make_scenes


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"))
