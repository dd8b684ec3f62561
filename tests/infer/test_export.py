"""Exported dense networks run without fcnseg and agree with PyTorch."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fcnseg.infer import load_predictor
from fcnseg.infer.export import export_model

from helpers import write_checkpoint


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    ck = write_checkpoint(tmp_path_factory.mktemp("ck") / "toy.pt", pad_mode="reflect")
    return load_predictor(ck, device="cpu", channels_last=False, output_stride=2)


def reference(pred, x):
    with torch.no_grad():
        return pred.dense(x).numpy()


def test_onnx_dynamic_size_matches_pytorch(predictor, tmp_path):
    path, meta = export_model(predictor, tmp_path / "m.onnx", "onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in [(23, 45), (60, 31)]:  # neither is the trace size
        x = torch.randn(2, 3, h, w)
        out = sess.run(None, {"image": x.numpy()})[0]
        ref = reference(predictor, x)
        assert out.shape == ref.shape == (2, 5, -(-h // 2), -(-w // 2))
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    doc = json.loads(meta.read_text())
    assert doc["mean"] == predictor.mean and doc["output_stride"] == 2
    props = {p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}
    assert json.loads(props["class_names"]) == predictor.class_names


def test_onnx_fixed_size(predictor, tmp_path):
    path, _ = export_model(predictor, tmp_path / "f.onnx", "onnx", height=32, width=40)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [d for d in sess.get_inputs()[0].shape] == [1, 3, 32, 40]
    x = torch.randn(1, 3, 32, 40)
    np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], reference(predictor, x),
                               atol=1e-4, rtol=0)


def test_torchscript_matches_pytorch_on_other_sizes(predictor, tmp_path):
    path, _ = export_model(predictor, tmp_path / "m.ts", "torchscript")
    files = {"fcnseg.json": ""}
    ts = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["fcnseg.json"])["num_classes"] == 5
    for h, w in [(23, 45), (50, 38)]:
        x = torch.randn(1, 3, h, w)
        out = ts(x).detach().numpy()
        np.testing.assert_allclose(out, reference(predictor, x), atol=1e-4, rtol=0)


def test_the_default_optimised_network_exports(tmp_path):
    """load_predictor's default (densify's optimised, channels_last form) exports as it runs."""
    ck = write_checkpoint(tmp_path / "toy.pt", pad_mode="constant")
    pred = load_predictor(ck, device="cpu", output_stride=1)
    assert pred.dense.optimizations is not None and pred.dense.optimizations.channels_last
    path, _ = export_model(pred, tmp_path / "d.onnx", "onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 29, 41)
    np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], reference(pred, x), atol=1e-4, rtol=0)


def test_export_settings_match_their_yaml():
    import yaml

    from fcnseg.infer.export import ExportSettings
    from fcnseg.settings import SettingsError, defaults

    from helpers import ROOT
    values = yaml.safe_load((ROOT / "conf" / "export.yaml").read_text())
    values = {k: v for k, v in values.items() if k not in ("defaults", "hydra")}
    assert {k: v for k, v in values.items() if v is not None} == \
        {k: v for k, v in defaults(ExportSettings).items() if v is not None}
    assert set(values) == set(defaults(ExportSettings))
    with pytest.raises(SettingsError, match="checkpoint: is required"):
        ExportSettings(output="m.onnx")
    with pytest.raises(SettingsError, match="format: got 'tflite'"):
        ExportSettings(checkpoint="a.pt", output="m.onnx", format="tflite")


def test_onnx_without_the_package_names_the_extra(predictor, tmp_path, monkeypatch):
    import sys

    from fcnseg.extras import MissingExtraError
    monkeypatch.setitem(sys.modules, "onnx", None)          # import onnx -> ModuleNotFoundError
    with pytest.raises(MissingExtraError, match=r"format=onnx needs .*pip install 'fcnseg\[export\]'"):
        export_model(predictor, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()
