import numpy as np

from fcnseg.data.palette import colorize, default_palette, resolve_palette

def test_default_palette_is_the_voc_colour_map():
    pal = default_palette(256)
    assert pal[:4] == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert pal[15] == [192, 128, 128]  # VOC's "person"
    assert len({tuple(c) for c in pal}) == 256


def test_resolve_palette_completes_a_short_palette():
    assert resolve_palette(None, 3) == default_palette(3)
    assert resolve_palette([(1, 2, 3)], 3) == [[1, 2, 3]] + default_palette(3)[1:]
    assert resolve_palette([[9, 9, 9]] * 4, 2) == [[9, 9, 9]] * 4


def test_colorize_ignore_unknown_and_many_classes():
    pal = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    mask = np.array([[0, 1, 2], [255, 7, -1]])
    out = colorize(mask, pal)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[0].tolist() == pal
    assert out[1].tolist() == [[255, 255, 255]] * 3  # ignored, past the palette, negative
    assert colorize(mask, pal, ignore_color=(1, 2, 3))[1, 0].tolist() == [1, 2, 3]
    big = default_palette(300)  # > 256 classes: label 255 is a class, not "ignore"
    labels = np.array([[255, 299]])
    assert colorize(labels, big, ignore_index=None)[0].tolist() == [big[255], big[299]]
