"""fcnseg.infer.model: a checkpoint made ready for inference (device, dense network,
the training's preprocessing) and the untiled path of already dense networks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.checkpoint import build_model, load_checkpoint, model_spec, save_checkpoint
from fcnseg.data.io import normalize, to_float
from fcnseg.infer import load_predictor
from fcnseg.infer.model import predict_whole

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


# -- the one-image API: predict() -------------------------------------------------------------

def test_predict_chooses_tiles_and_gives_the_whole_image_labels(tmp_path):
    """Tiled (tile 12 on a 70x53 image) and whole-image predict() against an independent
    float64 pass of the dense network over the whole image: labels at every pixel."""
    ck = write_checkpoint(tmp_path / "toy.pt", num_classes=4, in_channels=3, pad_mode="reflect")
    img = random_image(70, 53, 3, seed=9)
    ref = load_predictor(ck, device="cpu", channels_last=False, dtype=torch.float64)
    with torch.no_grad():
        want = ref.dense(ref.transform(ref.prepare(img))[None].double())[0]
    tiled = load_predictor(ck, device="cpu", tile_size=12, dtype=torch.float64)
    whole = load_predictor(ck, device="cpu", tile_size=0, dtype=torch.float64)
    assert tiled.batch_limit(70, 53) == 1 and whole.batch_limit(70, 53) == whole.batch_size
    a, b = tiled.predict(img, scores=True), whole.predict(img, scores=True)
    assert a.labels.shape == (70, 53) and a.labels.dtype == np.uint8
    assert np.array_equal(a.labels, want.argmax(0).numpy()) and np.array_equal(a.labels, b.labels)
    assert list(a.scores) == [0] and a.scores[0].shape == (4, 70, 53)
    np.testing.assert_allclose(a.scores[0], want.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.scores[0], want.numpy(), rtol=0, atol=1e-12)
    assert a.stride == 1 and tiled.predict(img).scores is None


def test_predict_at_a_stride_labels_every_pixel_and_batches_equal_one_by_one(tmp_path):
    ck = write_checkpoint(tmp_path / "toy.pt")
    pred = load_predictor(ck, device="cpu", output_stride=2, tile_size=64)
    imgs = [random_image(18, 22, 3, seed=s) for s in range(5)] + [random_image(25, 13, 3, seed=9)]
    assert pred.batch_limit(18, 22) > 1
    one = [pred(im, scores=True) for im in imgs]          # the predictor is a callable
    many = pred.predict_batch(imgs, scores=True)
    for p, q in zip(one, many):
        assert p.labels.shape == q.labels.shape and np.array_equal(p.labels, q.labels)
        np.testing.assert_allclose(p.scores[0], q.scores[0], rtol=1e-5, atol=1e-5)
    assert one[0].labels.shape == (18, 22) and one[0].scores[0].shape == (5, 9, 11)
    assert np.array_equal(one[0].labels[::2, ::2], one[0].scores[0].argmax(0))


def test_predictor_pickles_to_the_same_labels(tmp_path):
    """What a Ray or Spark worker receives: the pickle rebuilds the predictor from the
    checkpoint's weights (the file itself is not needed) and labels identically."""
    import pickle
    ck = write_checkpoint(tmp_path / "toy.pt", num_classes=4, pad_mode="replicate")
    pred = load_predictor(ck, device="cpu", tile_size=None, memory_mb=1)
    img = random_image(40, 31, 3, seed=4)
    want = pred.predict(img, scores=True)
    blob = pickle.dumps(pred)
    ck.unlink()
    again = pickle.loads(blob)
    assert again is not pred and again.tile() == pred.tile() and again.patch_size == pred.patch_size
    got = again(img, scores=True)
    assert np.array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.scores[0], want.scores[0])
    pred.source = None  # made by hand: refused with a message, not a broken pickle
    with pytest.raises(TypeError, match="load_predictor"):
        pickle.dumps(pred)


def test_predict_whole_network_and_a_path(smp_checkpoint, tmp_path):
    from PIL import Image
    pred = load_predictor(smp_checkpoint, device="cpu", channels_last=False)
    raw = random_image(29, 35, 3, seed=5)
    Image.fromarray(raw).save(tmp_path / "x.png")
    p = pred.predict(tmp_path / "x.png", scores=True)
    want = predict_whole(pred, raw)
    assert pred.batch_limit(29, 35) == 1 and pred.tile() is None
    assert np.array_equal(p.labels, want.labels.numpy()) and p.scores[0].shape == (3, 29, 35)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stacked_passes_through_pinned_memory_give_the_cpu_labels(tmp_path, monkeypatch):
    """The CUDA path of predict_batch: pinned upload on a copy stream, non-blocking download;
    several passes in flight before the first result is read."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    ck = write_checkpoint(tmp_path / "toy.pt", pad_mode="reflect")
    cpu = load_predictor(ck, device="cpu", tile_size=64, precision="fp32")
    gpu = load_predictor(ck, device="cuda", tile_size=64, precision="fp32")
    imgs = [gpu.prepare(random_image(20, 24, 3, seed=s)) for s in range(6)]
    pending = [gpu.start_batch(imgs[k:k + 2], scores=True) for k in range(0, 6, 2)]
    got = [p for finish in pending for p in finish()]
    for im, g in zip(imgs, got):
        want = cpu.predict(im, scores=True)
        np.testing.assert_allclose(g.scores[0], want.scores[0], atol=1e-4, rtol=1e-4)
        assert (g.labels == want.labels).mean() > 0.999
