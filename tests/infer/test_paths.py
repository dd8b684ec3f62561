"""fcnseg.infer.paths: which files a run reads and where their results go."""
import os
from pathlib import Path

import pytest

from fcnseg.infer.paths import (
    InputError,
    balance_by_pixels,
    check_output_path,
    find_collisions,
    find_inputs,
    image_pixels,
)


def _touch(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_folder_is_searched_recursively_hidden_and_non_images_skipped(tmp_path):
    inp = tmp_path / "in"
    _touch(inp, "b.png", "a/c.JPG", "a/notes.txt", ".hidden.png", ".cache/d.png", "a/.e.png.1.fcnseg-tmp")
    root, items = find_inputs(str(inp), tmp_path / "out")
    assert root == inp and [str(i.rel) for i in items] == ["a/c.JPG", "b.png"]
    assert items[0].output(tmp_path / "out", "overlay") == tmp_path / "out" / "a" / "c.overlay.png"
    assert items[0].output_rel("scores") == "a/c.scores.npy"


def test_one_file_and_a_glob_keep_their_folder_as_root(tmp_path):
    _touch(tmp_path, "in/x/y.png", "in/x/z/w.tif")
    root, items = find_inputs(str(tmp_path / "in/x/y.png"), tmp_path / "out")
    assert root == tmp_path / "in/x" and [str(i.rel) for i in items] == ["y.png"]
    root, items = find_inputs(f"{tmp_path}/in/**/*.tif", tmp_path / "out")
    assert root == tmp_path / "in" and [str(i.rel) for i in items] == ["x/z/w.tif"]


def test_unusable_inputs_say_what_to_change(tmp_path):
    with pytest.raises(InputError, match="input= is empty"):
        find_inputs("", tmp_path)
    with pytest.raises(InputError, match="is not a folder, a file or a glob"):
        find_inputs(str(tmp_path / "nope"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        find_inputs(str(tmp_path / "empty"), tmp_path / "out")


def test_result_paths_stay_inside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    (out / "ok").mkdir(parents=True)
    check_output_path(out / "ok" / "a.png", out)
    with pytest.raises(InputError, match="outside the output folder"):
        check_output_path(out / ".." / "a.png", out)
    os.symlink(tmp_path, out / "link")
    with pytest.raises(InputError, match="outside the output folder"):
        check_output_path(out / "link" / "a.png", out)


def test_collisions_name_the_earlier_input(tmp_path):
    _touch(tmp_path, "in/a.jpg", "in/a.png", "in/s/a.png")
    _, items = find_inputs(str(tmp_path / "in"), tmp_path / "out")
    assert find_collisions(items) == {"a.png": "a.jpg"}
    assert isinstance(items[0].path, Path)


def test_balance_by_pixels_largest_first_to_the_least_loaded_rank():
    pixels = [100, 1, 50, 50, 30, 20, 0, 0]
    shares = balance_by_pixels(pixels, 2)
    assert sorted(i for s in shares for i in s) == list(range(8))  # every file exactly once
    assert all(s == sorted(s) for s in shares)
    loads = [sum(max(1, pixels[i]) for i in s) for s in shares]
    assert sorted(loads) == [123, 130]  # the best split; index modulo 2 gives 181 vs 72
    assert shares == balance_by_pixels(pixels, 2)  # every rank computes the same split
    assert balance_by_pixels(pixels, 3)[0] == [0]  # the largest file alone on one rank
    assert balance_by_pixels([5], 3) == [[0], [], []]


def test_image_pixels_from_headers(tmp_path):
    import numpy as np
    import tifffile
    from PIL import Image
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((64, 48, 3), np.uint8), tile=(16, 16))
    (tmp_path / "c.png").write_bytes(b"not an image")
    assert image_pixels(tmp_path / "a.png") == 600
    assert image_pixels(tmp_path / "b.tif") == 64 * 48
    assert image_pixels(tmp_path / "c.png") == 0
