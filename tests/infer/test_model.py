"""fcnseg.infer.model: a checkpoint made ready for inference (device, dense network,
the training's preprocessing) and the untiled path of already dense networks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.data.io import normalize, to_float
from fcnseg.infer import load_predictor
from fcnseg.infer.model import predict_whole
from fcnseg.checkpoint import build_model, load_checkpoint, model_spec, save_checkpoint

from helpers import PALETTE, random_image, write_checkpoint


def test_predictor_carries_the_checkpoints_preprocessing_and_padding(tmp_path):
    ck = write_checkpoint(tmp_path / "toy.pt", num_classes=4, in_channels=3, pad_mode="replicate")
    pred = load_predictor(ck, device="cpu", output_stride=2)
    assert pred.device == torch.device("cpu") and not pred.model.training
    assert (pred.num_classes, pred.in_channels, pred.output_stride) == (4, 3, 2)
    assert (pred.pad_mode, pred.patch_size) == ("replicate", tuple(pred.model.patch_size))
    assert pred.palette == PALETTE[:4] and pred.class_names == [f"class{k}" for k in range(4)]
    assert pred.dense.output_stride in (2, (2, 2))
    raw = random_image(9, 7, 4, seed=3)  # RGBA: the alpha channel is dropped
    x = pred.transform(pred.prepare(raw))
    torch.testing.assert_close(x, normalize(to_float(raw[:, :, :3]), pred.mean, pred.std))


def test_missing_palette_falls_back_to_the_default_colours(tmp_path):
    ck = write_checkpoint(tmp_path / "toy.pt", num_classes=3)
    state = load_checkpoint(ck)
    state.pop("format"), state.pop("version")
    state["palette"] = None
    save_checkpoint(ck, **state)
    assert load_predictor(ck, device="cpu").palette == fcnseg.data.palette.default_palette(3)


def test_checkpoint_without_preprocessing_is_refused(tmp_path):
    ck = write_checkpoint(tmp_path / "toy.pt")
    state = load_checkpoint(ck)
    state.pop("format"), state.pop("version"), state.pop("mean")
    save_checkpoint(ck, **state)
    with pytest.raises(ValueError, match=r"lacks \['mean'\].*re-save it with tools/train.py"):
        load_predictor(ck, device="cpu")


@pytest.fixture(scope="module")
def smp_checkpoint(tmp_path_factory):
    """An already dense network (segmentation_models_pytorch U-Net, 3-stage encoder:
    output stride 8) in the training format."""
    spec = model_spec({"builder": "smp", "name": "Unet",
                       "kwargs": {"encoder_name": "resnet18", "encoder_weights": None,
                                  "encoder_depth": 3, "decoder_channels": [16, 8, 4]}}, 3, 3)
    torch.manual_seed(0)
    m = build_model(spec).eval()
    path = tmp_path_factory.mktemp("smp") / "unet.pt"
    return save_checkpoint(path, model=spec, state_dict=m.state_dict(), patch_size=None,
                           pad_mode=None, pad_value=None, in_channels=3, num_classes=3,
                           class_names=None, palette=None, mean=[0.5] * 3, std=[0.25] * 3,
                           ignore_index=255)


def test_dense_network_runs_whole_padded_to_its_stride(smp_checkpoint):
    pred = load_predictor(smp_checkpoint, device="cpu", channels_last=False)
    assert pred.dense is None and pred.patch_size is None
    raw = random_image(29, 35, 3, seed=5)  # neither side a multiple of 8
    p = predict_whole(pred, raw)
    assert tuple(p.labels.shape) == (29, 35) and tuple(p.scores.shape) == (3, 29, 35)
    x = F.pad(pred.transform(raw)[None], (0, 5, 0, 3), mode="replicate")  # to 32 x 40
    with torch.no_grad():
        want = pred.model(x)[0, :, :29, :35]
    torch.testing.assert_close(p.scores, want)
    assert np.array_equal(p.labels.numpy(), want.argmax(0).numpy())


def test_output_stride_is_refused_for_a_dense_network(smp_checkpoint):
    with pytest.raises(ValueError, match="already dense network.*output_stride=2"):
        load_predictor(smp_checkpoint, device="cpu", output_stride=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_predictor_gives_the_cpu_labels(tmp_path, monkeypatch):
    from fcnseg.infer.tiling import predict_tiled
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 means float32 here
    ck = write_checkpoint(tmp_path / "toy.pt", pad_mode="reflect")
    cpu, gpu = load_predictor(ck, device="cpu"), load_predictor(ck, device="cuda")
    assert gpu.device == torch.device("cuda", torch.cuda.current_device())
    raw = random_image(40, 33, 3, seed=8)
    a = predict_tiled(cpu.dense, raw, 16, transform=cpu.transform)
    b = predict_tiled(gpu.dense, raw, 16, transform=gpu.transform)  # float32: no autocast
    torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=1e-4)
    assert (a.labels == b.labels).float().mean() > 0.999
