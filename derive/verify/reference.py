"""An independent reference: the network in plain PyTorch, differentiated by torch.autograd.

Built from the Network alone (never from the derivation or the generated code), so
agreement with it is evidence, not an echo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from derive.network import Network


# Each activation and loss spelled in PyTorch, independently of derive's tables.
ACTIVATIONS = {
    "identity": lambda a, s: a,
    "relu": lambda a, s: torch.relu(a),
    "sigmoid": lambda a, s: torch.sigmoid(a),
    "tanh": lambda a, s: torch.tanh(a),
    "softplus": lambda a, s: torch.logaddexp(a, torch.zeros_like(a)),  # F.softplus switches to x above 20
    "leaky_relu": lambda a, s: torch.where(a > 0, a, s * a),  # slope at 0, as torch's leaky_relu and prelu
    "prelu": lambda a, s: torch.where(a > 0, a, s * a),
}
LOSSES = {
    "l2": lambda yh, y: 0.5 * (y - yh) ** 2,
    "l1": lambda yh, y: (y - yh).abs(),
    "hinge": lambda yh, y: torch.relu(1 - y * yh),
    "zero_one": lambda yh, y: (y * yh <= 0).to(yh.dtype),
    "binary_cross_entropy": lambda yh, y: F.binary_cross_entropy_with_logits(yh, y, reduction="none"),
}


def _linear(li, p, h):
    if li.vector:
        if h.dim() == 1:
            h = h[:, None]  # a scalar input is a length-1 vector
        return h @ p[li.weight].T
    return p[li.weight] * h


def _conv2d(li, p, h):
    return F.conv2d(h, p[li.weight], None, stride=li.stride, padding=li.padding)


def _locally_connected(li, p, h):
    """F.unfold and one kernel per position."""
    o, oh, ow = li.out_shape
    cols = F.unfold(h, li.kernel, padding=li.padding, stride=li.stride)  # (B, c·kh·kw, oh·ow), (c, p, q) order
    cols = cols.reshape(h.shape[0], -1, oh, ow)
    return torch.einsum("bkij,oijk->boij", cols, p[li.weight].reshape(o, oh, ow, -1))


# Each layer kind in PyTorch: the layer's linear part (its activation and bias are added below).
LAYERS = {
    "linear": _linear,
    "conv2d": _conv2d,
    "locally_connected": _locally_connected,
    "flatten": lambda li, p, h: h.reshape(h.shape[0], -1),  # C order over (c, h, w)
    "max_pool2d": lambda li, p, h: F.max_pool2d(h, li.kernel, li.stride, li.padding),
    "avg_pool2d": lambda li, p, h: F.avg_pool2d(h, li.kernel, li.stride, li.padding, count_include_pad=True),
}
# The kinds that read several quantities (a graph): they get the list of them.
MERGES = {
    "add": lambda li, p, hs: sum(hs[1:], hs[0]),
    "concat": lambda li, p, hs: torch.cat(hs, dim=1),  # features of (B, n), channels of (B, c, h, w)
}


def bias(b, a):
    """The bias b shaped to add to a (batch first): one per channel of a volume (conv2d's (o,) over
    (B, o, h, w)), or one per element where it has a's shape (linear, locally connected)."""
    return b.reshape(b.shape + (1,) * (a.dim() - 1 - b.dim()))


def forward(net: Network, params: dict, x):
    q = {net.input.name: x}  # every layer's output by name, for the layers that read it
    for li in net.info:
        if li.kind in MERGES:
            h = MERGES[li.kind](li, params, [q[s] for s in li.sources])
        else:
            h = LAYERS[li.kind](li, params, q[li.source])
        if li.bias:
            h = h + bias(params[li.bias], h)
        if li.activation is not None:
            slope = params[li.slope_param] if li.slope_param else li.slope_value
            h = ACTIVATIONS[li.activation](h, slope)
        q[f"f{li.index}"] = h
    if net.output_shape == (1,) and net.target.shape == ():
        h = h[:, 0]
    return h


def per_sample_loss(net: Network, yhat, y):
    kind = net.loss.type
    if kind == "cross_entropy":
        return F.cross_entropy(yhat, y.long(), reduction="none")
    ell = LOSSES[kind](yhat, y)
    return ell.sum(dim=1) if yhat.dim() == 2 else ell


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
