"""An independent reference: the network in plain PyTorch, differentiated by torch.autograd.

Built from the Network alone (never from the derivation or the generated code), so
agreement with it is evidence, not an echo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from derive.network import Network, VolumeLayerInfo


def _activation(kind: str, a, slope):
    if kind == "identity":
        return a
    if kind == "relu":
        return torch.relu(a)
    if kind == "sigmoid":
        return torch.sigmoid(a)
    if kind == "tanh":
        return torch.tanh(a)
    if kind == "softplus":
        return torch.logaddexp(a, torch.zeros_like(a))  # F.softplus switches to x above 20
    if kind in ("leaky_relu", "prelu"):
        return torch.where(a > 0, a, slope * a)  # slope at 0, as torch's leaky_relu and prelu
    raise ValueError(kind)


def forward(net: Network, params: dict, x):
    h = x
    for li in net.info:
        if isinstance(li, VolumeLayerInfo):
            h = _volume_layer(li, params, h)
            continue
        if li.vector:
            if h.dim() == 1:
                h = h[:, None]  # a scalar input is a length-1 vector
            a = h @ params[li.weight].T
        else:
            a = params[li.weight] * h
        if li.bias:
            a = a + params[li.bias]
        slope = params[li.slope_param] if li.slope_param else li.slope_value
        h = _activation(li.spec.activation, a, slope)
    if net.output_shape == (1,) and net.target.shape == ():
        h = h[:, 0]
    return h


def _volume_layer(li: VolumeLayerInfo, params: dict, h):
    """conv2d by F.conv2d; locally connected by F.unfold and one kernel per position; flatten as torch does."""
    if li.kind == "flatten":
        return h.reshape(h.shape[0], -1)  # C order over (c, h, w)
    w = params[li.weight]
    b = params[li.bias] if li.bias else None
    if li.kind == "conv2d":
        a = F.conv2d(h, w, b, stride=li.stride, padding=li.padding)
    else:
        o, oh, ow = li.out_shape
        cols = F.unfold(h, li.kernel, padding=li.padding, stride=li.stride)  # (B, c·kh·kw, oh·ow), (c, p, q) order
        cols = cols.reshape(h.shape[0], -1, oh, ow)
        a = torch.einsum("bkij,oijk->boij", cols, w.reshape(o, oh, ow, -1))
        if b is not None:
            a = a + b
    return _activation(li.spec.activation, a, li.slope_value)


def per_sample_loss(net: Network, yhat, y):
    kind = net.loss.type
    vec = yhat.dim() == 2
    if kind == "l2":
        ell = 0.5 * (y - yhat) ** 2
    elif kind == "l1":
        ell = (y - yhat).abs()
    elif kind == "hinge":
        ell = torch.relu(1 - y * yhat)
    elif kind == "zero_one":
        ell = (y * yhat <= 0).to(yhat.dtype)
    elif kind == "binary_cross_entropy":
        ell = F.binary_cross_entropy_with_logits(yhat, y, reduction="none")
    elif kind == "cross_entropy":
        return F.cross_entropy(yhat, y.long(), reduction="none")
    else:
        raise ValueError(kind)
    return ell.sum(dim=1) if vec else ell


def loss_and_grads(net: Network, params: dict, x, y):
    """(loss, {name: gradient}, yhat) in the dtype of ``params``."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    yhat = forward(net, p, x)
    ell = per_sample_loss(net, yhat, y)
    L = ell.mean() if net.loss.reduction == "mean" else ell.sum()
    names = list(p)
    if L.requires_grad:
        gs = torch.autograd.grad(L, [p[n] for n in names], allow_unused=True)
    else:  # the zero-one loss: no gradient flows, every gradient is 0
        gs = [None] * len(names)
    grads = {n: (g if g is not None else torch.zeros_like(p[n])) for n, g in zip(names, gs)}
    return L.detach(), {k: v.detach() for k, v in grads.items()}, yhat.detach()
