"""fcnseg.runtime: device choice, torchrun environment, the one autocast rule, seeding,
atomic writes and palettes."""
import os
import random

import numpy as np
import pytest
import torch

from fcnseg import runtime
from fcnseg.infer.tiling import forward_windows

from helpers import toy_model


@pytest.fixture
def no_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible GPUs as far as device choice is concerned (no CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# ---------------------------------------------------------------------------- device
def test_device_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device=cuda but torch sees no CUDA.*device=cpu"):
        runtime.pick_device("cuda")
    with pytest.raises(RuntimeError, match="no CUDA"):
        runtime.pick_device("cuda:0")


def test_device_names_are_checked():
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:<index>, got 'gpu'"):
        runtime.pick_device("gpu")


def test_cuda_index_local_rank_and_bounds(fake_cuda, no_torchrun, monkeypatch):
    assert runtime.pick_device("cuda") == torch.device("cuda", 0)
    assert runtime.pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: "auto"/"cuda" is this process's GPU
    assert runtime.pick_device("auto") == torch.device("cuda", 1)
    assert runtime.pick_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert runtime.pick_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    with pytest.raises(RuntimeError, match="GPU 5 but torch sees 2"):
        runtime.pick_device("cuda:5")
    with pytest.raises(ValueError, match="index must be an integer"):
        runtime.pick_device("cuda:x")


# --------------------------------------------------------------------------- torchrun
def test_dist_env_plain_and_torchrun(no_torchrun, monkeypatch):
    assert runtime.dist_env() == (0, 1, 0)
    env = runtime.init_distributed("cpu")  # a plain run joins no process group
    assert (env.rank, env.world_size, env.main, env.enabled) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
    runtime.cleanup_distributed(env)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.dist_env() == (2, 3, 1)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(RuntimeError, match=r"RANK=3 is not in \[0, WORLD_SIZE=3\)"):
        runtime.dist_env()


@pytest.mark.parametrize("n, world", [(7, 3), (2, 4), (12, 4)])
def test_shards_cover_every_item_exactly_once(n, world):
    shards = [runtime.shard(n, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(runtime.ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]
    assert list(runtime.ShardSampler(n, 1, world)) == shards[1]


def test_all_reduce_mean_is_the_value_on_one_process():
    assert runtime.all_reduce_mean(2.5, runtime.DistEnv()) == 2.5


# ---------------------------------------------------------------------- autocast rule
def test_autocast_off_on_a_cpu_without_native_bf16(monkeypatch):
    from fcnseg.runtime import precision
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    for setting in ("auto", "fp32", True, False):
        assert runtime.amp_dtype("cpu", setting) is None
        assert runtime.amp_dtype(torch.device("cpu"), setting) is None
    with pytest.raises(ValueError, match="precision=fp16: .* use precision=fp32"):
        runtime.amp_dtype("cpu", "fp16")


@pytest.mark.parametrize("bf16, want", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_on_cuda_prefers_bf16(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.amp_dtype("cuda", "auto") is want
    assert runtime.amp_dtype("cuda:1", True) is want
    assert runtime.amp_dtype("cuda", False) is None


def test_grad_scaler_only_for_float16():
    assert runtime.grad_scaler("cpu", torch.float16).is_enabled()
    assert not runtime.grad_scaler("cpu", torch.bfloat16).is_enabled()
    assert not runtime.grad_scaler("cpu", None).is_enabled()


def test_autocast_context():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast("cpu", None):
        assert (a @ b).dtype == torch.float32
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16


def test_inference_takes_its_precision_from_the_one_rule(monkeypatch):
    """Tiled inference resolves its precision setting by the rule training uses
    (fcnseg.runtime.precision): auto is bf16 only on a CPU with native bf16."""
    import fcnseg
    from fcnseg.runtime import precision
    dense = fcnseg.densify(toy_model(num_classes=3, in_channels=1))
    x = torch.randn(2, 1, 21, 21)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    assert forward_windows(dense, x, amp="auto").dtype == torch.float32     # emulated bf16: fp32
    assert forward_windows(dense, x, amp="bf16").dtype == torch.bfloat16    # asked for
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    assert forward_windows(dense, x, amp="auto").dtype == torch.bfloat16
    assert forward_windows(dense, x, amp=True).dtype == torch.bfloat16      # the old boolean: auto
    assert forward_windows(dense, x, amp=False).dtype == torch.float32      # IEEE fp32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_precision_rule_on_a_real_gpu(no_torchrun):
    import fcnseg
    dev = runtime.pick_device("auto")
    assert dev == torch.device("cuda", 0)
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert runtime.amp_dtype(dev) is want
    assert runtime.grad_scaler(dev, want).is_enabled() == (want is torch.float16)
    env = runtime.init_distributed("auto")  # one process: selects the GPU, joins no group
    assert env.device == dev and torch.cuda.current_device() == 0 and not env.enabled
    dense = fcnseg.densify(toy_model(num_classes=3, in_channels=1).to(dev))
    x = torch.randn(2, 1, 21, 21)
    assert forward_windows(dense, x, amp=True).dtype is want
    assert forward_windows(dense, x, amp=False).dtype == torch.float32


# ----------------------------------------------------------------- seeding, determinism
def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_all_seeds_every_generator():
    runtime.seed_all(123)
    a = _draws()
    runtime.seed_all(123)
    assert _draws() == a
    runtime.seed_all(124)
    assert _draws() != a


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    runtime.seed_all(7)
    torch.save(runtime.rng_state(), tmp_path / "rng.pt")
    first = [_draws() for _ in range(3)]
    runtime.seed_all(99)
    runtime.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert [_draws() for _ in range(3)] == first


def test_configure_determinism_on_cpu():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        runtime.configure_determinism(True, "cpu")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


# ----------------------------------------------------------------------- atomic writes
def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    runtime.write_text_atomic(target, "old")
    assert target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt):
        with runtime.atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".a.txt.")
            tmp.write_text("half")
            raise KeyboardInterrupt  # a kill mid-write
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temporary left
    runtime.write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_remove_stale_temps_only_touches_this_files_temporaries(tmp_path):
    target = tmp_path / "a.png"
    stale = [tmp_path / f".a.png.{pid}{runtime.TMP_SUFFIX}" for pid in (11, 12)]
    keep = [tmp_path / ".b.png.11.fcnseg-tmp", tmp_path / "a.png.txt", tmp_path / ".a.png"]
    for p in stale + keep:
        p.write_text("x")
    assert runtime.remove_stale_temps(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    assert runtime.remove_stale_temps(tmp_path / "missing" / "a.png") == 0


def test_no_other_module_defines_these_helpers():
    """One home per concern: each runtime helper, and the palette, is defined in its own module only."""
    import fcnseg
    root = os.path.dirname(fcnseg.__file__)
    homes = {"def pick_device": "runtime/device.py", "def dist_env": "runtime/device.py",
             "init_process_group(": "runtime/device.py", "torch.autocast(": "runtime/precision.py",
             "def seed_all": "runtime/seeding.py", "def rng_state": "runtime/seeding.py",
             "def atomic_path": "runtime/files.py", "os.replace(": "runtime/files.py",
             "def default_palette": "data/palette.py", "def colorize": "data/palette.py"}
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if f.endswith(".py"):
                text = open(path, encoding="utf-8").read()
                found += [(rel, n) for n, home in homes.items() if n in text and rel != home]
    assert not found, f"helpers re-implemented outside their home module: {found}"
