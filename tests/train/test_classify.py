"""Training a patch classifier on labelled patches (fcnseg.train.classify), the patchnet
builder for a given patch size, and the checkpoint through the whole-image inference path."""
import json
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
import fcnseg.zoo
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.data.io import prepare_image, read_image
from fcnseg.infer import InferenceSettings, load_predictor, run_inference
from fcnseg.train import TrainingError
from fcnseg.train.classify import PatchClassificationTask
from fcnseg.zoo.patchnets import PATCHNET, _patch_size, patchnet_layers

from helpers import compose, save_gray

P = 16  # the tiny patches' side; no zoo default has it, so a model that ignores the data fails
CLASSES = ["bar", "blob", "plain"]  # sorted = label order


# ------------------------------------------------------------------ the builder
@pytest.mark.parametrize("side", [10, 11, 16, 23, 28, 31, 44, 63, 84, 99, 130, 200])
def test_patchnet_layers_are_computed_for_the_requested_patch(side):
    m = fcnseg.zoo.create("patchnet", 5, in_channels=1, width_mult=0.25, patch_size=side)
    assert m.patch_size == (side, side)  # what strip_padding's search finds on the built net
    spec, head_map = patchnet_layers(side)
    assert head_map >= 3
    features = fcnseg.zoo.spec("patchnet").build(5, 1, 0.25, patch_size=side)[0]
    assert _patch_size(features, head_map) == side
    out = m(torch.randn(2, 1, side, side))
    assert out.shape == (2, 5)


def test_patchnet_for_84_px_is_the_default_net():
    assert patchnet_layers(84) == (PATCHNET, 3)
    a = fcnseg.zoo.create("patchnet", 7, in_channels=3, patch_size=84)
    b = fcnseg.zoo.create("patchnet", 7, in_channels=3)
    assert a.patch_size == b.patch_size == (84, 84)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_patch_sizes_patchnet_cannot_build_are_refused():
    with pytest.raises(ValueError, match="at least 10x10 px"):
        fcnseg.zoo.create("patchnet", 2, patch_size=9)
    with pytest.raises(ValueError, match="square patches"):
        fcnseg.zoo.create("patchnet", 2, patch_size=(20, 24))
    with pytest.raises(TypeError, match="lenet5 takes no option patch_size"):
        fcnseg.zoo.create("lenet5", 2, in_channels=1, patch_size=28)


@pytest.mark.parametrize("side", [23, 31])  # 4x4 kernels in one and in two stages
def test_patchnet_for_a_given_patch_is_exact_in_float64(side):
    m = fcnseg.zoo.create("patchnet", 4, in_channels=2, width_mult=0.25, patch_size=side).double().eval()
    x = torch.randn(1, 2, 29, 26, dtype=torch.float64)
    dense = fcnseg.densify(m, pad_mode="replicate")
    with torch.no_grad():
        got = dense(x)
        ref = fcnseg.patchwise(m, x, pad_mode="replicate", batch_size=512)
    assert got.shape == ref.shape == (1, 4, 29, 26)
    assert (got - ref).abs().max() <= 1e-9 * ref.abs().max()


# ---------------------------------------------------------- tiny labelled patches
def _tiny_patch(cls, rng):
    """bar: a bright horizontal bar through the centre; blob: a dark disc; plain: flat."""
    yy, xx = np.mgrid[:P, :P]
    img = np.full((P, P), 128.0)
    if cls == "bar":
        r = rng.integers(6, 9)
        img[r:r + 3, 2:P - 2] = 230
    elif cls == "blob":
        cy, cx = rng.integers(6, 10, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12] = 30
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def patch_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 5)):
        for cls in CLASSES[::-1]:  # written in reverse order: the labels must follow the sorted names
            for i in range(n):
                save_gray(root / split / cls / f"{i:03d}.png", _tiny_patch(cls, rng))
    return root


def _settings(root, *extra):
    return compose(["data=patches", f"data.root={root}", "model.kwargs.width_mult=0.5", "trainer.device=cpu",
                    "trainer.steps=40", "trainer.eval_every=20", "trainer.batch_size=8",
                    "trainer.val_batch_size=7", *extra])


@pytest.fixture(scope="module")
def trained(patch_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("classify_run")
    return out, fcnseg.train.run(_settings(patch_root), out)


def test_training_writes_accuracy_and_the_confusion_matrix(trained):
    out, metrics = trained
    for f in ("metrics.json", "metrics.csv", "curves.png", "last.pt", "best.pt"):
        assert (out / f).stat().st_size > 0, f
    js = json.loads((out / "metrics.json").read_text())
    cm = np.array(js["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == js["patches"] == 15
    assert cm.sum(1).tolist() == [5, 5, 5]  # rows: the true classes of the val patches
    assert js["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert js["per_class_accuracy"] == pytest.approx((np.diag(cm) / cm.sum(1)).tolist())
    assert js["class_names"] == CLASSES and js["patch_size"] == [P, P] and js["steps"] == 40
    assert js["accuracy"] == metrics["accuracy"] >= 0.8  # three easy classes: it did learn
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,epoch,train_loss,val_accuracy") and len(rows) == 3
    raw = torch.load(out / "last.pt", weights_only=True)  # no pickled code in checkpoints
    assert raw["patch_size"] == [P, P] and raw["class_names"] == CLASSES and raw["in_channels"] == 1
    assert raw["model"]["kwargs"]["patch_size"] == P and raw["method"] == "classify"


def test_the_run_dispatches_patch_data_to_the_classifier(patch_root, tmp_path):
    metrics = fcnseg.train.run(_settings(patch_root, "trainer.steps=2", "trainer.eval_every=2"), tmp_path)
    assert "confusion_matrix" in metrics and (tmp_path / "best.pt").is_file()


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(patch_root, tmp_path, monkeypatch):
    settings = _settings(patch_root, "trainer.steps=9", "trainer.eval_every=3", "trainer.deterministic=true")
    fcnseg.train.run(settings, tmp_path / "full")
    step = PatchClassificationTask.step

    def then_sigterm(self, run, *batch):  # a SIGTERM arriving during step 4 (of 6 per epoch)
        loss = step(self, run, *batch)
        if run.step == 4:
            run.stop.signum = signal.SIGTERM
        return loss
    monkeypatch.setattr(PatchClassificationTask, "step", then_sigterm)
    stopped = fcnseg.train.run(settings, tmp_path / "part")
    assert stopped == {"interrupted": True, "step": 4, "run_dir": str(tmp_path / "part"),
                       "signal": signal.SIGTERM}
    monkeypatch.undo()
    resumed = fcnseg.train.run(dict(settings, resume=True), tmp_path / "part")
    assert resumed["confusion_matrix"] == json.loads((tmp_path / "full" / "metrics.json").read_text())[
        "confusion_matrix"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 9
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_a_model_of_another_patch_size_is_refused_with_the_sizes(patch_root, tmp_path):
    with pytest.raises(TrainingError) as e:
        fcnseg.train.run(_settings(patch_root, "model=lenet5"), tmp_path)
    side = fcnseg.zoo.create("lenet5", 3, in_channels=1).patch_size[0]
    msg = str(e.value)
    assert f"classifies {side}x{side}" in msg and f"are {P}x{P}" in msg and "never resized" in msg
    assert e.value.fixes == ["model=patchnet"]
    with pytest.raises(TrainingError, match="classifies 20x20 .* model.kwargs.patch_size"):
        fcnseg.train.run(_settings(patch_root, "+model.kwargs.patch_size=20"), tmp_path)


def test_checkpoint_labels_whole_images_exactly_as_the_patch_classifier(trained, tmp_path):
    out, _ = trained
    ck = load_checkpoint(out / "best.pt")
    rng = np.random.default_rng(5)
    # a whole image made of the three kinds of patch (and their borders), 37 x 42: no tile multiple
    canvas = np.full((37, 42), 128, np.uint8)
    canvas[2:2 + P, 3:3 + P] = _tiny_patch("bar", rng)
    canvas[18:18 + P, 22:22 + P] = _tiny_patch("blob", rng)
    save_gray(tmp_path / "in" / "scene.png", canvas)
    res = run_inference(InferenceSettings(checkpoint=str(out / "best.pt"), input=str(tmp_path / "in"),
                                          output=str(tmp_path / "out"), save_scores=True, device="cpu"))
    assert res.failed == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "scene.png"))
    scores = np.load(tmp_path / "out" / "scene.scores.npy")  # float16 (K, H, W)
    assert labels.shape == (37, 42) and scores.shape == (3, 37, 42)

    # the reference: the trained classifier on the patch of every pixel, float64
    model, info = model_from_checkpoint(ck)
    model = model.double()
    x = prepare_image(read_image(tmp_path / "in" / "scene.png"), info["in_channels"], info["mean"],
                      info["std"])[None].double()  # (1, 1, 37, 42) exactly as inference normalises
    with torch.no_grad():
        ref = fcnseg.patchwise(model, x, info["patch_size"], pad_mode=info["pad_mode"],
                               pad_value=info["pad_value"], batch_size=512)[0]  # (3, 37, 42)
    assert torch.allclose(torch.from_numpy(scores.astype(np.float64)), ref, rtol=2e-3, atol=2e-3 * ref.abs().max())
    top2 = ref.topk(2, 0).values
    clear = (top2[0] - top2[1]) > 1e-4  # float32 inference cannot split closer ties
    assert clear.float().mean() > 0.99
    assert np.array_equal(labels[clear.numpy()], ref.argmax(0).numpy()[clear.numpy()])
    assert len(np.unique(labels)) >= 2  # the picture is not one class everywhere

    # the dense network the inference path builds, in float64: equal at every pixel
    pred = load_predictor(out / "best.pt", device="cpu", dtype=torch.float64)
    with torch.no_grad():
        dense = pred.dense(pred.transform(pred.prepare(read_image(tmp_path / "in" / "scene.png")))[None].double())
    assert dense.shape == (1, 3, 37, 42)
    assert (dense[0] - ref).abs().max() <= 1e-9 * ref.abs().max()


def test_the_checkpoint_scores_later_as_the_run_validated_it(trained, patch_root, tmp_path):
    from fcnseg.train.evaluate import evaluate_checkpoint
    from fcnseg.train.settings import EvaluateSettings
    out, _ = trained
    settings = EvaluateSettings.from_dict({"checkpoint": str(out / "last.pt"), "batch_size": 7,
                                           "data": {"kind": "patches", "root": str(patch_root)}})
    evaluate_checkpoint(settings, tmp_path)
    got = json.loads((tmp_path / "metrics.json").read_text())
    final = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "mean_class_accuracy", "per_class_accuracy", "confusion_matrix"):
        assert got[key] == final[key], key
