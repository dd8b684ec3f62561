"""The fully convolutional form of a network that keeps its zero padding.

`densify` refuses padding inside a network: a conv that zero-fills at each PATCH border
cannot be reproduced by one pass shared by all patches. Users who want the exact function
of a pretrained padded backbone get `strided_fcn(model)` instead:

    fcn = fcnseg.zoo.strided_fcn(fcnseg.zoo.create("resnet50", 1000, padding="same", pretrained=True))
    scores = fcn(image)  # (N, K, (H - P) // s + 1, (W - Q) // s + 1), s = total stride

What it equals, exactly: the network's body (everything before its head's flatten, adaptive
or global pooling) runs once on the whole image, so its zero padding sits at the IMAGE border
only; the head (pooling + classifier) is applied to every M x M window of the body's final
map, M being that map's size for the natural P x Q input. Output (m, n) is therefore the head
on the body's map cells [m, m+M) x [n, n+M), i.e. the input region starting at pixel
(m*s, n*s) on the stride grid. On an image of exactly P x Q it is the classifier's output.
It equals the classifier applied to the P x Q crop at (m*s, n*s) wherever the classifier's
padding is never reached -- always for a network without padding (checked against densify
in the tests), never in general for a padded one, whose crops see zeros at their borders
where the whole-image pass sees neighbouring pixels.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

_HEAD_STARTS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


def _is_head_start(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _HEAD_STARTS)
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.nn.functional.adaptive_avg_pool2d,
                               torch.nn.functional.adaptive_max_pool2d, torch.mean)
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape", "mean")


def _split(model: nn.Module) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    from fcnseg.convert.trace import trace

    gm = trace(model)
    nodes = list(gm.graph.nodes)
    start = next((n for n in nodes if _is_head_start(gm, n)), None)
    if start is None:
        raise ValueError(f"{type(model).__name__} has no flatten/adaptive/global pooling head: it is "
                         "already fully convolutional; run it on the image directly")
    cut = start.args[0]  # the body's final map, (N, C, M, M) at the natural input
    body = torch.fx.Graph()
    env: dict = {}
    for n in nodes:
        env[n] = body.node_copy(n, lambda a: env[a])
        if n is cut:
            break
    body.output(env[cut])
    head = torch.fx.Graph()
    env = {cut: head.placeholder("features")}
    after = nodes[nodes.index(start):]
    for n in after:
        if n.op == "output":
            head.output(torch.fx.map_arg(n.args[0], lambda a: env[a]))
            break
        missing = [a for a in n.all_input_nodes if a not in env]
        if missing:
            raise ValueError(f"the head of {type(model).__name__} reads {missing[0].name}, computed "
                             "before its pooling/flatten; strided_fcn needs a body -> head network")
        env[n] = head.node_copy(n, lambda a: env[a])
    return torch.fx.GraphModule(gm, body, "Body"), torch.fx.GraphModule(gm, head, "Head")


class StridedFCN(nn.Module):
    """body on the whole image, head on every M x M window of its final map (see module doc)."""

    def __init__(self, model: nn.Module, patch_size: tuple[int, int], in_channels: int = 3,
                 chunk: int = 1024):
        super().__init__()
        self.body, self.head = _split(model)
        self.patch_size, self.chunk = tuple(patch_size), chunk
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            probe = _meta(self.body)(torch.empty(1, in_channels, *patch_size, device="meta", dtype=dtype))
        self.window = tuple(probe.shape[-2:])  # (M, M): the head's input map
        self.stride = tuple(p // m for p, m in zip(patch_size, self.window))  # informative only

    def forward(self, x):
        f = self.body(x)  # (N, C, H', W')
        mh, mw = self.window
        n, c, h, w = f.shape
        if h < mh or w < mw:
            raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than the patch {self.patch_size}")
        win = f.unfold(2, mh, 1).unfold(3, mw, 1)  # (N, C, H'-M+1, W'-M+1, M, M)
        oh, ow = win.shape[2:4]
        win = win.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c, mh, mw)  # one window per row
        scores = torch.cat([self.head(part).reshape(part.shape[0], -1) for part in win.split(self.chunk)])
        return scores.reshape(n, oh, ow, -1).permute(0, 3, 1, 2)  # (N, K, H'-M+1, W'-M+1)


def _meta(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).to("meta")


def strided_fcn(model: nn.Module, patch_size=None, in_channels: int = 3) -> StridedFCN:
    """The fully convolutional form of a padded classifier, exact on its stride grid."""
    patch_size = patch_size if patch_size is not None else getattr(model, "patch_size", None)
    if patch_size is None:
        raise ValueError("strided_fcn needs the natural input size: pass patch_size=(P, Q) or a model "
                         "from fcnseg.zoo.create(..., padding='same')")
    return StridedFCN(model, tuple(patch_size), in_channels)
