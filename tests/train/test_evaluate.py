"""Two gloo processes evaluating shards of the validation set give, after the all_reduce,
exactly the confusion matrix of one process evaluating everything."""
import os
import socket

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fcnseg
import fcnseg.zoo
import fcnseg.zoo.patchnets  # noqa: F401
from fcnseg.data import build_dataset
from fcnseg.train import evaluate
from fcnseg.runtime import ShardSampler
from fcnseg.train.loaders import collate_images

from helpers import make_scenes


def _net():
    torch.manual_seed(3)
    m = fcnseg.zoo.create("patchnet", 3, in_channels=1, width_mult=0.25).eval()
    return fcnseg.densify(m, pad_mode="replicate")


def _worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ds = build_dataset("folder", root, "val")
    loader = torch.utils.data.DataLoader(ds, 2, sampler=ShardSampler(len(ds), rank, world),
                                         collate_fn=collate_images)
    cm = evaluate(_net(), loader, 3)
    if rank == 0:
        torch.save(cm.mat, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters: ~10-30 s on 2 shared cores
def test_two_process_metrics_equal_single_process(tmp_path):
    root = make_scenes(tmp_path / "s", n_train=1, n_val=5)  # odd: shards of 3 and 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(root), str(tmp_path / "cm.pt")), nprocs=2)
    ds = build_dataset("folder", root, "val")
    single = evaluate(_net(), torch.utils.data.DataLoader(ds, 2, collate_fn=collate_images), 3)
    both = torch.load(tmp_path / "cm.pt", weights_only=True)
    assert both.sum() == single.mat.sum() == 5 * 31 * 32  # each pixel once (row 0 ignored)
    assert torch.equal(both, single.mat)
