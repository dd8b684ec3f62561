"""Device helpers that need no GPU to check."""
import torch

import fcnseg
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
