"""Receptive field, strides and the FLOP model, checked against hand counts."""
import fcnseg

from helpers import K, lecture_net


def test_lecture_net_geometry():
    g = fcnseg.geometry_of(lecture_net(), 15)
    assert g.receptive_field == (15, 15)
    assert g.total_stride == (6, 6)
    assert [layer.cum_stride[0] for layer in g.layers] == [1, 2, 2, 6, 6]
    assert [layer.dense_dilation[0] for layer in g.layers] == [1, 1, 2, 2, 6]
    # conv 3->4 2x2 at 14x14, max 2x2 at 7x7 (4 ch), conv 4->5 at 6x6, max 3x3 at 2x2 (5 ch), conv 5->K
    patch = 2 * 3 * 4 * 4 * 196 + 4 * 4 * 49 + 2 * 4 * 4 * 5 * 36 + 9 * 5 * 4 + 2 * 5 * 4 * K
    dense = 2 * 3 * 4 * 4 + 4 * 4 + 2 * 4 * 4 * 5 + 9 * 5 + 2 * 5 * 4 * K
    assert g.flops_patch == patch and g.flops_dense_per_pixel == dense
    assert abs(g.flop_ratio - patch / dense) < 1e-12
    assert g.halo == (7, 7, 7, 7)
    assert "ratio" in g.table()


def test_output_stride_costs_less_per_pixel():
    g1 = fcnseg.geometry_of(lecture_net(), 15)
    g6 = fcnseg.geometry_of(lecture_net(), 15, output_stride=6)
    # at output stride 6 each output pixel owns 36 positions of conv1, 9 of pool1/conv2, 1 of the rest
    per_pos = [2 * 3 * 4 * 4, 4 * 4, 2 * 4 * 4 * 5, 9 * 5, 2 * 5 * 4 * K]
    assert g6.flops_dense_per_pixel == 36 * per_pos[0] + 9 * (per_pos[1] + per_pos[2]) + per_pos[3] + per_pos[4]
    assert g1.flops_dense_per_pixel == sum(per_pos)
