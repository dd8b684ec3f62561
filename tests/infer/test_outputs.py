"""fcnseg.infer.outputs: label maps, overlays and score files as written to disk."""
import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data.palette import default_palette
from fcnseg.infer.outputs import ScoresFile, save_labels, save_overlay, save_scores, to_image_size
from fcnseg.runtime import TMP_SUFFIX


@pytest.mark.parametrize("stride", [2, 3])
def test_to_image_size_takes_the_nearest_grid_pixel(stride):
    H, W = 11, 7
    rows, cols = -(-H // stride), -(-W // stride)
    grid = np.arange(rows * cols).reshape(rows, cols)
    full = to_image_size(grid, H, W, stride)
    assert full.shape == (H, W)
    def nearest(i, n):  # the closest grid pixel m*s; a tie goes to the later one
        return min(range(n), key=lambda m: (abs(i - m * stride), -m))
    for i in range(H):
        for j in range(W):
            assert full[i, j] == grid[nearest(i, rows), nearest(j, cols)], (i, j)
    assert full[::stride, ::stride].tolist() == grid.tolist()  # grid pixels keep their label


def test_label_png_is_a_palette_image_of_the_class_indices(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    pal = [[10, 20, 30], [200, 0, 0], [0, 180, 0]]
    save_labels(tmp_path / "a.png", labels, pal)
    img = Image.open(tmp_path / "a.png")
    assert img.mode == "P" and np.array_equal(np.asarray(img), labels)
    assert img.getpalette()[:9] == [v for c in pal for v in c]


def test_more_than_256_classes_give_a_16_bit_label_png(tmp_path):
    labels = np.array([[0, 299], [256, 17]])
    save_labels(tmp_path / "a.png", labels, default_palette(300))
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.dtype.itemsize == 2 and np.array_equal(back, labels)


def test_overlay_blends_the_class_colours(tmp_path):
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [1, 0]])
    pal = [[0, 0, 0], [200, 40, 250]]
    save_overlay(tmp_path / "o.png", image, labels, pal, alpha=0.25)
    got = np.asarray(Image.open(tmp_path / "o.png"))
    want = np.rint(0.75 * 100 + 0.25 * np.asarray(pal, float)[labels]).astype(np.uint8)
    assert np.array_equal(got, want)


def test_scores_are_float16_and_the_filled_file_appears_only_on_close(tmp_path):
    s = torch.randn(3, 4, 5, dtype=torch.float64)
    save_scores(tmp_path / "a.npy", s)
    back = np.load(tmp_path / "a.npy")
    assert back.dtype == np.float16 and np.allclose(back, s.numpy(), atol=2e-3)
    f = ScoresFile(tmp_path / "b.npy", (3, 4, 5))
    f.array[:] = 1.5
    assert not (tmp_path / "b.npy").exists()  # only the hidden temporary while tiles arrive
    f.close()
    assert (np.load(tmp_path / "b.npy") == 1.5).all()
    g = ScoresFile(tmp_path / "c.npy", (3, 4, 5))
    g.abort(RuntimeError("tile failed"))
    assert not (tmp_path / "c.npy").exists() and not list(tmp_path.glob(f".*{TMP_SUFFIX}"))
