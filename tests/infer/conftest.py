"""Fixtures of the inference tests: a tiny checkpoint and a folder of test images
(built by the helpers module)."""
import pytest

from helpers import make_image_tree, write_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return write_checkpoint(tmp_path / "toy.pt")


@pytest.fixture
def image_tree(tmp_path):
    return make_image_tree(tmp_path / "in")
