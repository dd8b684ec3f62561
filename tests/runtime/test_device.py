"""Device helpers that need no GPU to check."""

import pytest
import torch

import fcnseg
from fcnseg import runtime
from fcnseg.heads import OneHead
from fcnseg.runtime import device_memory_budget_mb, unread_parameters

from helpers import RNet, alexnet_like


def test_unread_parameters_name_a_head_the_dense_graph_does_not_compute():
    model = RNet()
    assert unread_parameters(fcnseg.densify(OneHead(model, 0))) == ["classifier.dense5_2.weight",
                                                                   "classifier.dense5_2.bias"]
    assert unread_parameters(fcnseg.densify(model)) == []             # both heads computed
    assert unread_parameters(fcnseg.densify(alexnet_like(), 83)) == []
    assert unread_parameters(alexnet_like()) == []                    # not a dense network


def test_memory_budget_comes_from_the_device_only_on_cuda():
    assert device_memory_budget_mb("cpu") is None
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        assert 0 < device_memory_budget_mb("cuda:0") <= free / 2 ** 20


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
