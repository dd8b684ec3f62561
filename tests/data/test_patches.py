"""Labelled patches in the ImageFolder layout (fcnseg.data.patches) and the demo patch
generator (tools/make_demo_data.py --patches)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import DatasetError
from fcnseg.data.patches import PatchFolderDataset

from helpers import save_gray, save_rgb

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_demo_data.py"


def _patch(seed, h=12, w=12, c=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if c == 1 else (h, w, c), dtype=np.uint8)


def _write(root, split, cls, name, arr):
    path = root / split / cls / f"{name}.png"
    if arr.ndim == 3 and arr.shape[2] == 4:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="RGBA").save(path)
        return path
    return (save_gray if arr.ndim == 2 else save_rgb)(path, arr)


@pytest.fixture
def patch_root(tmp_path):
    # folders created in an unsorted order: the labels must follow the sorted names
    for k, cls in enumerate(["zebra", "ant", "mole"]):
        for i in range(2 + k):
            _write(tmp_path, "train", cls, f"p{i}", _patch(10 * k + i))
        _write(tmp_path, "val", cls, "v0", _patch(100 + k))
    return tmp_path


def test_classes_are_the_sorted_folder_names_and_labels_follow_them(patch_root):
    ds = PatchFolderDataset(patch_root, "train")
    assert ds.class_names == ["ant", "mole", "zebra"] and ds.num_classes == 3
    assert ds.patch_size == (12, 12) and ds.in_channels == 1 and len(ds) == 2 + 3 + 4
    assert ds.class_counts.tolist() == [3, 4, 2]
    by_name = {ds[i]["name"]: int(ds[i]["label"]) for i in range(len(ds))}
    assert by_name["ant/p2"] == 0 and by_name["mole/p3"] == 1 and by_name["zebra/p1"] == 2
    meta = ds.meta
    assert meta["class_names"] == ds.class_names and len(meta["palette"]) == 3


def test_labelled_patches_are_a_kind_of_the_data_registry(patch_root):
    from fcnseg.data import DATASETS, build_dataset, dataset_class
    assert dataset_class("patches") is PatchFolderDataset and DATASETS["patches"].task == "patches"
    assert {DATASETS[k].task for k in DATASETS if k != "patches"} == {"segmentation"}
    ds = build_dataset("patches", patch_root, "val", in_channels=3, mean=[0.5] * 3, std=[0.2] * 3)
    assert isinstance(ds, PatchFolderDataset) and ds.in_channels == 3 and ds.mean == [0.5] * 3
    with pytest.raises(ValueError, match="unknown dataset kind 'patch'.*patches"):
        dataset_class("patch")


def test_normalisation_is_settled_in_one_place(patch_root):
    from fcnseg.data import IMAGENET_STD, resolve_mean_std
    # a statistic left out comes from the fallback (default: ImageNet's), a given one stays
    assert resolve_mean_std([0.1, 0.2, 0.3], None, 3) == ([0.1, 0.2, 0.3], IMAGENET_STD)
    assert resolve_mean_std(None, [2.0], 1, fallback=lambda: ([0.7], [9.0])) == ([0.7], [2.0])
    with pytest.raises(DatasetError, match="somewhere: mean/std need 3 values"):
        resolve_mean_std([0.5], [0.2], 3, "somewhere")
    with pytest.raises(DatasetError, match="std must be positive"):
        PatchFolderDataset(patch_root, "train", mean=[0.5], std=[0.0])


def test_validation_takes_the_training_classes(patch_root):
    train = PatchFolderDataset(patch_root, "train")
    (patch_root / "val" / "mole" / "v0.png").unlink()
    (patch_root / "val" / "mole").rmdir()  # a class absent from val keeps the others' labels
    val = PatchFolderDataset(patch_root, "val", class_names=train.class_names)
    assert [(s.name, s.label) for s in val.samples] == [("ant/v0", 0), ("zebra/v0", 2)]
    _write(patch_root, "val", "wasp", "v0", _patch(7))
    with pytest.raises(DatasetError, match=r"\['wasp'\] are not classes of the training split"):
        PatchFolderDataset(patch_root, "val", class_names=train.class_names)


def test_patch_is_not_resized_and_holds_the_file_values(tmp_path):
    a, b = _patch(1, 9, 14), _patch(2, 9, 14)  # 14 wide, 9 high: rows and columns must not swap
    _write(tmp_path, "train", "a", "x", a)
    _write(tmp_path, "train", "b", "y", b)
    ds = PatchFolderDataset(tmp_path, "train", mean=[0.25], std=[0.5])
    assert ds.patch_size == (9, 14)
    x = ds[0]["image"]
    assert x.shape == (1, 9, 14) and x.dtype == torch.float32
    back = (x[0].double() * 0.5 + 0.25) * 255
    assert torch.allclose(back, torch.from_numpy(a).double(), atol=1e-4)


def test_mixed_gray_and_colour_trains_as_colour(tmp_path):
    gray = _patch(3)
    _write(tmp_path, "train", "a", "gray", gray)
    _write(tmp_path, "train", "b", "rgb", _patch(4, c=3))
    _write(tmp_path, "train", "b", "rgba", _patch(5, c=4))
    ds = PatchFolderDataset(tmp_path, "train", mean=[0, 0, 0], std=[1, 1, 1])
    assert ds.in_channels == 3 and len(ds) == 3
    x = ds[0]["image"]  # the gray patch: its value in all three channels
    assert x.shape == (3, 12, 12)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0] * 255, torch.from_numpy(gray).float(), atol=1e-4)
    assert ds[2]["image"].shape == (3, 12, 12)  # RGBA: alpha dropped
    only_gray = tmp_path / "g"
    _write(only_gray, "train", "a", "x", gray)
    _write(only_gray, "train", "b", "y", gray)
    assert PatchFolderDataset(only_gray, "train").in_channels == 1


def test_a_patch_of_another_size_is_refused_by_name(patch_root):
    odd = _write(patch_root, "train", "mole", "odd", _patch(9, 12, 10))
    with pytest.raises(DatasetError) as e:
        PatchFolderDataset(patch_root, "train")
    msg = str(e.value)
    assert str(odd) in msg and "10x12" in msg and "not 12x12" in msg and "never resized" in msg
    with pytest.raises(DatasetError, match="not 12x10"):  # a given size: every other file is odd
        PatchFolderDataset(patch_root, "val", patch_size=(10, 12))


def test_sizes_are_those_a_viewer_shows_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_patch(6, 10, 12))  # stored 12 wide, 10 high, shown turned by 90 degrees
    exif = img.getexif()
    exif[0x0112] = 6
    (tmp_path / "train" / "a").mkdir(parents=True)
    img.save(tmp_path / "train" / "a" / "turned.png", exif=exif)
    _write(tmp_path, "train", "b", "upright", _patch(7, 12, 10))
    ds = PatchFolderDataset(tmp_path, "train")
    assert ds.patch_size == (12, 10) and [d["image"].shape for d in (ds[0], ds[1])] == [(1, 12, 10)] * 2


def test_an_augmentation_that_resizes_is_refused(patch_root):
    import albumentations as A
    ds = PatchFolderDataset(patch_root, "train", transform=A.Compose([A.Resize(16, 16)]))
    with pytest.raises(DatasetError, match="never resized"):
        ds[0]
    flip = PatchFolderDataset(patch_root, "train", transform=A.Compose([A.HorizontalFlip(p=1.0)]))
    plain = PatchFolderDataset(patch_root, "train")
    assert torch.equal(flip[0]["image"], plain[0]["image"].flip(-1))


def test_layout_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="split 'train' not found"):
        PatchFolderDataset(tmp_path, "train")
    (tmp_path / "train" / "only").mkdir(parents=True)
    save_gray(tmp_path / "train" / "only" / "a.png", _patch(0))
    with pytest.raises(DatasetError, match="at least two"):
        PatchFolderDataset(tmp_path, "train")
    (tmp_path / "train" / "other").mkdir()
    (tmp_path / "train" / "other" / "notes.txt").write_text("not a patch")
    ds = PatchFolderDataset(tmp_path, "train")  # a class without patches in train is allowed
    assert ds.class_names == ["only", "other"] and ds.class_counts.tolist() == [1, 0]


# ------------------------------------------------------------------ the demo generator
def _load_tool():
    spec = importlib.util.spec_from_file_location("make_demo_data", _TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scenes(root, size=16):
    """Two scenes per split; mask classes 0 (background), 1 ("a/b": a name with a slash), 2."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for n in range(2):
            img = rng.integers(0, 256, (size, size), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            mask[3:9, 4:12] = 1
            mask[10:14, 2 + n:7 + n] = 2
            save_gray(root / split / "images" / f"{n:06d}.png", img)
            save_gray(root / split / "masks" / f"{n:06d}.png", mask)
    (root / "classes.json").write_text(json.dumps({"names": ["background", "a/b", "c d"]}))
    return root


@pytest.mark.parametrize("patch", [5, 6])
def test_generator_labels_each_patch_with_its_centre_pixel(tmp_path, patch):
    tool = _load_tool()
    scenes = _scenes(tmp_path / "scenes")
    out = tmp_path / "patches"
    counts = tool.build_patches(scenes, out, patch, {"train": 7, "val": 3}, seed=0)
    assert counts["train"] == {"background": 7, "a-b": 7, "c-d": 7} and sum(counts["val"].values()) == 9
    lo = (patch - 1) // 2  # rows above the centre pixel, the project's convention
    ds = PatchFolderDataset(out, "train")
    assert ds.patch_size == (patch, patch) and ds.class_names == ["a-b", "background", "c-d"]
    label_of = {"background": 0, "a-b": 1, "c-d": 2}
    for s in ds.samples:
        cls = s.image.parent.name
        scene, i, j = s.image.stem.split("_")
        img = np.asarray(Image.open(scenes / "train" / "images" / f"{scene}.png"))
        mask = np.asarray(Image.open(scenes / "train" / "masks" / f"{scene}.png"))
        i, j = int(i), int(j)
        assert mask[i, j] == label_of[cls]
        top, left = i - lo, j - lo
        assert top >= 0 and left >= 0 and top + patch <= 16 and left + patch <= 16  # no padding invented
        assert np.array_equal(np.asarray(Image.open(s.image)), img[top:top + patch, left:left + patch])
    again = tmp_path / "again"
    tool.build_patches(scenes, again, patch, {"train": 7, "val": 3}, seed=0)
    assert sorted(p.relative_to(again) for p in again.rglob("*.png")) == \
        sorted(p.relative_to(out) for p in out.rglob("*.png"))  # deterministic


def test_shipped_demo_patches_are_a_valid_small_set():
    root = _TOOL.parents[1] / "data" / "fashion_patches"
    train = PatchFolderDataset(root, "train")
    val = PatchFolderDataset(root, "val", class_names=train.class_names)
    assert train.num_classes == 11 and train.patch_size == val.patch_size == (44, 44)
    assert train.class_counts.min() > 0 and val.class_counts.min() > 0
    assert sum(p.stat().st_size for p in root.rglob("*")) < 2_000_000
