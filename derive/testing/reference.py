"""The named intermediates in plain PyTorch: a_l, f_l, the padded inputs, the per-sample loss,
and by torch.autograd δ_l = ∂L/∂a_l, ∂L/∂f_l, ∂L/∂(padded f_l) and ∂L/∂θ.

Built from the Network alone (never from the derivation or the generated code), keyed by the
names derive/names.py gives.  L carries the batch scale (1/B for the mean), as the generated
backward pass does, so ∂L/∂f_top matches the generated dL_df_top.  Layers without an
activation (flatten) have f_l only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from derive import names
from derive.network import Network, VolumeLayerInfo
from derive.verify.reference import _activation, per_sample_loss


def _pre_activation(li, params, h, q, src):
    if isinstance(li, VolumeLayerInfo):
        if li.padding:
            h = F.pad(h, (li.padding,) * 4)
            q[li.padded or names.padded(src)] = h
        w = params[li.weight]
        b = params[li.bias] if li.bias else None
        if li.kind == "conv2d":
            return F.conv2d(h, w, b, stride=li.stride)
        o, oh, ow = li.out_shape
        cols = F.unfold(h, li.kernel, stride=li.stride).reshape(h.shape[0], -1, oh, ow)  # (c, p, q) order
        a = torch.einsum("bkij,oijk->boij", cols, w.reshape(o, oh, ow, -1))
        return a + b if b is not None else a
    if li.vector:
        a = (h[:, None] if h.dim() == 1 else h) @ params[li.weight].T
    else:
        a = params[li.weight] * h
    return a + params[li.bias] if li.bias else a


def named_quantities(net: Network, params: dict, x, y) -> dict:
    """{name: tensor} for every forward quantity and every gradient the derivation names."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    q: dict = {}
    h, src = x, net.input.name
    for li in net.info:
        f_name = names.activation(li.index)
        if isinstance(li, VolumeLayerInfo) and li.kind == "flatten":
            h = h.reshape(h.shape[0], -1)  # C order over (c, h, w)
        else:
            a = _pre_activation(li, p, h, q, src)
            q[names.pre_activation(li.index)] = a
            slope = p[li.slope_param] if li.slope_param else li.slope_value
            h = _activation(li.spec.activation, a, slope)
        q[f_name] = h
        src = f_name
    yhat = h[:, 0] if net.output_shape == (1,) and net.target.shape == () else h
    ell = per_sample_loss(net, yhat, y)
    L = ell.mean() if net.loss.reduction == "mean" else ell.sum()
    out = {k: v.detach() for k, v in q.items()}
    out["loss_per_sample"] = ell.detach()
    wrt = {}
    for name, t in q.items():
        if not t.requires_grad:  # x_pad: nothing upstream of the input
            continue
        if name.startswith("a") and name[1:].isdigit():
            wrt[names.delta(int(name[1:]))] = t
        else:  # f_l and a padded f_l
            wrt[names.grad(name)] = t
    wrt.update({names.grad(k): v for k, v in p.items()})
    if L.requires_grad:
        gs = torch.autograd.grad(L, list(wrt.values()), allow_unused=True)
    else:  # the zero-one loss: no gradient flows
        gs = [None] * len(wrt)
    for (name, t), g in zip(wrt.items(), gs):
        out[name] = g.detach() if g is not None else torch.zeros_like(t)
    return out
