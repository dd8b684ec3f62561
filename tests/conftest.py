"""Fixtures of every test (shared helpers live in tests/helpers.py)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
