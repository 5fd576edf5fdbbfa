"""The named intermediates in plain PyTorch: a_l, f_l, the padded inputs, the per-sample loss,
and by torch.autograd δ_l = ∂L/∂a_l, ∂L/∂f_l, ∂L/∂(padded f_l) and ∂L/∂θ.

Built from the Network alone (never from the derivation or the generated code), keyed by the
names derive/names.py gives.  L carries the batch scale (1/B for the mean), as the generated
backward pass does, so ∂L/∂f_top matches the generated dL_df_top.  Layers without an
activation (flatten, pooling) have f_l only, computed by derive.verify.reference's layer table.
In a graph, a quantity several layers read is read by each through its own copy, so that
torch.autograd's gradient at each copy is that path's term (dL_df1_via3), and at the
quantity itself their sum (dL_df1).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from derive import names
from derive.network import Network
from derive.verify.reference import ACTIVATIONS, LAYERS, MERGES, bias, per_sample_loss


def named_quantities(net: Network, params: dict, x, y) -> dict:
    """{name: tensor} for every forward quantity and every gradient the derivation names."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    q: dict = {}  # forward quantities, in order
    wrt: dict = {}  # gradient name -> the tensor it is the gradient of
    # so that a first layer without parameters (flatten) has ∂L/∂f1
    out_of = {net.input.name: x.detach().clone().requires_grad_(True)}  # each layer's output, for its readers
    readers: dict = {}
    for li in net.info:
        for s in li.sources:
            readers[s] = readers.get(s, 0) + 1

    def read(s, l):
        """A quantity several layers read: each reads its own copy, whose gradient is that path's term."""
        if readers[s] < 2:
            return out_of[s]
        copy = out_of[s].clone()
        if s != net.input.name:
            wrt[names.path_term(s, l)] = copy
        return copy

    for li in net.info:
        l = li.index
        h = read(li.source, l)
        if li.padded:  # the zero-padded input is a named quantity of its own (conv2d, locally connected)
            h = F.pad(h, (li.padding,) * 4)
            q[li.padded] = h
            if li.source != net.input.name:  # x_pad has no gradient in the derivation: nothing is upstream of x
                wrt[names.grad(li.padded)] = h  # dL_df1_pad, as derive/layers/conv.py names it
            li = replace(li, padding=0)
        if li.kind in MERGES:  # add, concat: the quantities it reads, joined
            a = MERGES[li.kind](li, p, [h] + [read(s, l) for s in li.sources[1:]])
        else:
            a = LAYERS[li.kind](li, p, h)  # verify's own rebuild of the layer's linear part
        if li.bias:
            a = a + bias(p[li.bias], a)
        if li.activation is None:  # flatten, pooling: f_l is the layer's only quantity
            h = a
        else:
            q[names.pre_activation(l)] = wrt[names.delta(l)] = a
            slope = p[li.slope_param] if li.slope_param else li.slope_value
            h = ACTIVATIONS[li.activation](a, slope)
        q[names.activation(l)] = wrt[names.upstream(l)] = out_of[names.activation(l)] = h
    yhat = h[:, 0] if net.output_shape == (1,) and net.target.shape == () else h
    ell = per_sample_loss(net, yhat, y)
    L = ell.mean() if net.loss.reduction == "mean" else ell.sum()
    wrt.update({names.grad(k): v for k, v in p.items()})
    if L.requires_grad:
        gs = torch.autograd.grad(L, list(wrt.values()), allow_unused=True)
    else:  # the zero-one loss: no gradient flows
        gs = [None] * len(wrt)
    out = {k: v.detach() for k, v in q.items()}
    out["loss_per_sample"] = ell.detach()
    for (name, t), g in zip(wrt.items(), gs):
        out[name] = g.detach() if g is not None else torch.zeros_like(t)
    return out
