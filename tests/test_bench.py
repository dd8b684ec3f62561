"""The benchmark compares methods that compute the same thing, and its report is built from its numbers."""
import json

import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.bench.methods import (
    HandConversionError,
    HandDense,
    ShiftAndStitch,
    hand_convert,
    patch_batch_size,
    random_pixel_coords,
)


def tiny_membrane():
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(3, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()
    net.patch_size = (18, 18)
    return net


def test_hand_conversion_and_shift_and_stitch_equal_patchwise():
    torch.manual_seed(0)
    model = tiny_membrane()
    x = torch.randn(1, 1, 13, 10, dtype=torch.float64)
    ref = fcnseg.patchwise(model, x)
    with torch.no_grad():
        hand = HandDense(hand_convert(model, model.patch_size, 1), model.patch_size)(x)
        stitched = ShiftAndStitch(model)(x)
    assert ShiftAndStitch(model).s == (4, 4)
    torch.testing.assert_close(hand, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(stitched, ref, atol=1e-10, rtol=1e-10)


def test_hand_conversion_refuses_what_stock_layers_cannot_do():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2, 2), nn.Flatten(), nn.Linear(2 * 2 * 2, 2))
    with pytest.raises(HandConversionError, match="AvgPool2d has no dilation"):
        hand_convert(net, (6, 6), 1)
    padded = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(HandConversionError, match="padded"):
        hand_convert(padded, (4, 4), 1)


def test_sampling_helpers():
    pix = random_pixel_coords(7, 5, 20, seed=1)
    assert pix.shape == (20, 2) and len({tuple(p) for p in pix.tolist()}) == 20
    assert pix[:, 0].max() < 7 and pix[:, 1].max() < 5
    assert random_pixel_coords(3, 3, 100).shape == (9, 2)                      # never more than the image
    assert patch_batch_size((95, 95), 1) == 256 and patch_batch_size((404, 404), 3) < 64
    assert patch_batch_size((95, 95), 1, "cpu", tiny_membrane()) == 256      # the probe is for CUDA only


@pytest.mark.slow
def test_quick_run_writes_consistent_results(tmp_path):
    from fcnseg.bench.run import main
    result = main(["--quick", "--out-dir", str(tmp_path), "--docs", str(tmp_path / "b.md")])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["nets"] and (tmp_path / "bench.png").stat().st_size > 10_000
    for net in result["nets"]:
        for run in net["runs"]:
            f = run["forward"]
            for key in ("densify_plain", "shift_stitch", "patch_nchw", "patch_cl"):
                assert f[key]["max_abs_diff"] < 1e-4, (net["name"], run["side"], key)
            assert min(f["patch_nchw"]["time_s"], f["patch_cl"]["time_s"]) > f["densify"]["time_s"]
            assert f["densify"]["executed_flops"] > 0
            bf16 = f["reduced"]["bf16"]                      # beside the fp32 rows, in the same run
            assert bf16["precision"] == "bf16" and bf16["label_agreement"] > 0.9
            assert 0 < bf16["max_rel_err"] < 0.1 and bf16["patch"]["time_s"] > bf16["time_s"]
        for prof in net["profiles"]:
            assert sum(n["flops"] for n in prof["nodes"]) > 0
    assert saved["precision"]["exact"] == "fp32" and saved["precision"]["float32_math"]["tf32"] is False
    assert saved["precision"]["reduced"] == ["bf16"]
    text = (tmp_path / "b.md").read_text()
    assert "ratios are measured within one run" in text and "membrane95" in text
    assert "every exact row ran in **fp32** (TF32 off" in text and "label agreement with fp32" in text
    assert "Where the time goes" in text


def test_random_pixel_coords_on_the_output_grid():
    pix = random_pixel_coords(20, 17, 1000, seed=0, stride=8)                  # grid 3 x 3
    assert len(pix) == 9 and (pix % 8 == 0).all() and pix[:, 0].max() == 16 and pix[:, 1].max() == 16


def test_profile_counts_every_flop_of_the_dense_pass():
    from torch.utils.flop_counter import FlopCounterMode

    from fcnseg.bench.profile import by_op, profile_dense
    torch.manual_seed(0)
    dense = fcnseg.densify(tiny_membrane().float())
    x = torch.randn(1, 1, 21, 19)
    rows = profile_dense(dense, x, repeats=1)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        dense(x)
    assert sum(r.flops for r in rows) == counter.get_total_flops() > 0
    convs = [r for r in rows if "conv" in r.op and r.flops]
    assert len(convs) == 4                                   # two convolutions and the two Linear layers
    assert convs[0].detail.startswith("1->3 3x3") and "d2" in convs[1].detail
    ops = {op for op, *_ in by_op(rows)}
    assert {"max_pool2d", "pad", "outside the graph"} <= ops      # the ReLUs run inside the convolutions
    assert all(r.time_s >= 0 for r in rows if r.name != "rest")


def _result(dense_s, patch_s, flops=4e11):
    fwd = {"densify": {"time_s": dense_s, "executed_flops": flops, "peak_mb": 1},
           "patch_nchw": {"time_s": patch_s * 2, "peak_mb": 1, "sampled": 8, "batch_size": 8},
           "patch_cl": {"time_s": patch_s, "peak_mb": 1, "sampled": 8, "batch_size": 8}}
    net = {"name": "membrane95", "width": 1.0, "output_stride": 1, "flop_ratio": 555.0, "flops_patch": 1.0,
           "flops_dense_per_pixel": 1.0, "matmul_gflops": {"1024": 90.0, "2048": 100.0},
           "runs": [{"side": 1024, "forward": fwd, "train": []}]}
    return {"matmul_gflops": [{"1024": 10.0, "2048": 20.0}], "nets": [net]}


def test_targets_are_computed_from_the_numbers():
    from fcnseg.bench.report import speed_table, target_lines
    met = "\n".join(target_lines(_result(dense_s=5.0, patch_s=8000.0, flops=4.1e11)))
    assert "1024x1024 >= 1500x" in met and "**met** (1,600x" in met
    assert "channels_last" in met                        # the faster layout is the baseline
    assert "(1024: 0.82)" in met                          # against the network's own matmul (100)
    missed = "\n".join(target_lines(_result(dense_s=5.0, patch_s=7000.0, flops=3e11)))
    assert "**not met** (1,400x" in missed and "(1024: 0.60)" in missed
    assert speed_table(_result(5.0, 8000.0))[2].startswith("| 1024x1024 | 8000.0 s |")


def test_goals_are_data():
    from fcnseg.bench.report import load_targets, target_lines
    targets = load_targets()
    assert targets["membrane_forward_speedup"][0] == {"side": 1024, "min": 1500}
    targets["membrane_forward_speedup"] = [{"side": 1024, "min": 1000}]
    lines = "\n".join(target_lines(_result(dense_s=5.0, patch_s=7000.0), targets))
    assert "1024x1024 >= 1000x" in lines and "**met** (1,400x" in lines and "1500x" not in lines


def _with_bf16(native, dense_s):
    result = _result(5.0, 8000.0)
    result["precision"] = {"exact": "fp32", "float32_math": {"tf32": False}, "reduced": ["bf16"],
                           "native": {"bf16": native}}
    result["nets"][0]["runs"][0]["forward"]["reduced"] = {"bf16": {
        "time_s": dense_s, "peak_mb": 1, "label_agreement": 0.999, "max_abs_err": 0.01, "max_rel_err": 0.002,
        "patch": {"time_s": 9000.0, "layout": "patch_cl", "sampled": 8, "batch_size": 8}}}
    return result


def test_reduced_precision_goal_is_judged_only_where_native():
    from fcnseg.bench.report import target_lines
    native = "\n".join(target_lines(_with_bf16(True, 2.0)))
    assert "in bf16 >= 2.0x its IEEE float32 time" in native and "**met** (2.50x, labels 99.90%)" in native
    emulated = "\n".join(target_lines(_with_bf16(False, 9.0)))
    assert "**not applicable on this machine**: it has no native bf16" in emulated and "(0.56x" in emulated


def test_report_keeps_the_hand_written_notes(tmp_path):
    from fcnseg.bench.report import NOTES_BEGIN, NOTES_END, write_markdown
    result = {**_with_bf16(False, 9.0), "mode": "full", "wall_s": 60.0, "load_average_start": [0.1],
              "load_average_end": [0.2],
              "machine": {"cpu": "cpu", "cores": 2, "torch": "t", "torch_threads": 2, "python": "3",
                          "device": "cpu"}}
    result["nets"][0].update(patch_size=[95, 95], in_channels=1, total_stride=[8, 8], source="zoo")
    docs = tmp_path / "b.md"
    docs.write_text(f"old\n{NOTES_BEGIN}\nWhy the pass is fast.\n{NOTES_END}\nold tables\n")
    text = write_markdown(result, tmp_path / "b.png", docs)
    assert "Why the pass is fast." in text and "old tables" not in text
    assert "| 1024 | bf16 | 9000.0 ms | 0.56x | 9000.0 s (patch_cl) | 1,000x | 99.90% | 2.0e-03 (1.0e-02) |" in text


def test_bench_settings_match_their_yaml_and_the_command_line():
    import yaml

    from fcnseg.bench.run import parse_settings
    from fcnseg.bench.settings import BenchSettings
    from fcnseg.settings import SettingsError, defaults

    from helpers import ROOT
    assert yaml.safe_load((ROOT / "conf" / "bench.yaml").read_text()) == defaults(BenchSettings)
    assert parse_settings([]) == BenchSettings()
    s = parse_settings(["--quick", "--no-tiling", "--precision", "fp32", "bf16", "fp16", "--sizes", "64"])
    assert s.quick and not s.tiling and s.reduced == ("bf16", "fp16") and s.sizes == [64]
    with pytest.raises(SettingsError, match="precision: .*must hold fp32"):
        parse_settings(["--precision", "bf16"])
    with pytest.raises(SettingsError, match="precision: got 'int8'"):
        BenchSettings(precision=("fp32", "int8"))


def test_add_merges_networks_by_name():
    from fcnseg.bench.run import merged
    base = {**_result(5.0, 8000.0), "wall_s": 10.0, "load_average_start": [1.0], "load_average_end": [2.0]}
    base["nets"].append({**base["nets"][0], "name": "vgg16"})
    new = {**_result(4.0, 8000.0), "wall_s": 5.0, "load_average_start": [3.0], "load_average_end": [4.0]}
    out = merged(new, base)
    assert [n["name"] for n in out["nets"]] == ["vgg16", "membrane95"]
    assert out["nets"][1]["runs"][0]["forward"]["densify"]["time_s"] == 4.0
    assert out["wall_s"] == 15.0 and len(out["matmul_gflops"]) == 2 and len(out["runs_merged"]) == 2
