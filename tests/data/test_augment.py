"""Augmentation settings -> pipeline; aug=none needs no albumentations."""
import sys

import pytest

from fcnseg.data.augment import build_transform


def test_no_augmentation_does_not_import_albumentations(monkeypatch):
    monkeypatch.setitem(sys.modules, "albumentations", None)     # as if it were not installed
    assert build_transform({"transforms": []}) is None and build_transform(None) is None
    from fcnseg.extras import MissingExtraError
    with pytest.raises(MissingExtraError, match=r"fcnseg\[train\]"):
        build_transform({"transforms": [{"name": "HorizontalFlip", "p": 0.5}]})
