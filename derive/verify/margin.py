"""Which samples lie within float32 rounding of a kink, where a float32 evaluation may take the other branch.

A relu's derivative jumps at 0, a max-pool's at a tie, a hinge's or an l1's at its corner.  Within
rounding of such a point, a float32 evaluation may decide the branch differently from a float64 one;
both are exact derivatives of the network at points ~1e-7 apart, but they differ by a whole term
(one δ times one input window), and no accumulation bound covers that.  So the float32 rows are
compared only at points where every branch is decided the same way by any float32 evaluation:
``ambiguous`` bounds the float32 error of every kink argument (a running forward error bound, in
float64, on the network rebuilt in torch by ``reference``) and names the samples to draw again.

The bound, for the point (params, x) exactly representable in float32 (checks.draw rounds it):
  a = Σ_k W_k·h_k + b over n terms, with ĥ = h + Δh, |Δh| ≤ e:
    |â − a| ≤ |W|·e + (U_MUL + γ_{n+1})·(|W|·(|h| + e) + |b|),   γ_m = m·u / (1 − m·u), u = 2⁻²⁴
  (U_MUL covers the products of Triton's tf32x3 dots, each within 2·2⁻²² of the float32 product);
  an activation φ with Lipschitz constant λ: e_f = λ·e_a + 4·u·|f| (exp, log and a division, a few ulps),
  and relu, which rounds nothing: e_f = e_a where a > 0, else 0 (an exact 0 in every precision);
  max pooling: e_out = the window's largest e; average pooling: the mean of e plus γ_{k²+1} of the mean of |h|.
Kinks: |a| ≤ e_a for relu, leaky_relu and prelu; a window's two largest values closer than e₁ + e₂ for max
pooling (two relu zeros tie exactly everywhere, and route a zero gradient either way); the hinge's, l1's and zero-one's corner within the bound of ŷ (and of y·ŷ's own rounding).
"""

from __future__ import annotations

import numpy as np

from derive.errors import DerivationError
from derive.layers import rule_for
from derive.network import Network
from derive.tables.activations import ACTIVATIONS
from derive.tables.losses import LOSS_RULES

U = 2.0 ** -24
U_MUL = 2.0 ** -21


def gamma(m):
    return m * U / (1 - m * U)


def ambiguous(net: Network, params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A boolean per sample: True where some kink argument is within its float32 error bound of the kink."""
    return _walk(net, params, x, y)[0]


def bounds(net: Network, params: dict, x: np.ndarray) -> dict:
    """{a_l or f_l: (its float64 value, the bound on its float32 error)} for every layer, as numpy arrays."""
    return _walk(net, params, x, None)[1]


def _merged(li, p, reads):
    """(value, bound) of an add or concat: concat is exact; an add's errors add up, and its sum of k
    terms rounds by at most γ_{k-1}·Σ|terms|."""
    from derive.verify import reference

    merge = reference.MERGES[li.kind]
    h, e = merge(li, p, [r[0] for r in reads]), merge(li, p, [r[1] for r in reads])
    if rule_for(li).rounding == "sum":
        e = e + gamma(len(reads) - 1) * sum(r[0].abs() for r in reads)
    elif rule_for(li).rounding != "exact":
        raise _no_rounding(li)
    return h, e


def _no_rounding(li) -> DerivationError:
    return DerivationError(f"layer {li.index} ({li.kind}): its rule gives no float32 rounding for verify's kink "
                           f"margin (LayerRule.rounding: dot, max, mean, sum or exact)")


def _walk(net, params, x, y):
    import torch
    import torch.nn.functional as F

    from derive.verify import reference

    out = {}
    with torch.no_grad():
        p = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
        ap = {k: v.abs() for k, v in p.items()}
        h = torch.as_tensor(np.asarray(x, dtype=np.float64))
        e = torch.zeros_like(h)
        bad = torch.zeros(h.shape[0], dtype=torch.bool)

        def flag(mask):
            nonlocal bad
            bad = bad | mask.reshape(mask.shape[0], -1).any(dim=1)

        q = {net.input.name: (h, e)}  # every quantity a layer may read, with its bound (graphs read any)
        for li in net.info:
            layer = reference.LAYERS.get(li.kind)
            rule = rule_for(li)
            rounding = rule.rounding
            if rule.multi_input:
                h, e = _merged(li, p, [q[s] for s in li.sources])
            else:
                h, e = q[li.source]
            if rule.multi_input:
                pass  # bounded above
            elif rounding == "dot":
                ones = {li.weight: torch.ones_like(p[li.weight])}
                n = layer(li, ones, torch.ones_like(h))  # terms per output (padding counted: an upper bound)
                a = layer(li, p, h)
                absb = reference.bias(ap[li.bias], a) if li.bias else 0.0
                if li.bias:
                    a = a + reference.bias(p[li.bias], a)
                e = layer(li, ap, e) + (U_MUL + gamma(n + 1)) * (layer(li, ap, h.abs() + e) + absb)
                h = a
            elif rounding == "max":
                kh, kw = li.kernel
                if kh * kw > 1:
                    hp = F.pad(h, (li.padding,) * 4, value=-float("inf"))
                    ep = F.pad(e, (li.padding,) * 4, value=0.0)
                    cols = F.unfold(hp, li.kernel, stride=li.stride)
                    ecols = F.unfold(ep, li.kernel, stride=li.stride)
                    b, _, L = cols.shape
                    cols = cols.reshape(b, h.shape[1], kh * kw, L)
                    ecols = ecols.reshape(b, h.shape[1], kh * kw, L)
                    top, idx = cols.topk(2, dim=2)
                    etop = ecols.gather(2, idx)
                    # strict: two relu zeros tie exactly in every precision (their bound is 0, see below)
                    flag((top[:, :, 0] - top[:, :, 1]) < etop.sum(dim=2))
                h, e = layer(li, p, h), F.max_pool2d(e, li.kernel, li.stride, li.padding)
            elif rounding == "mean":
                k2 = li.kernel[0] * li.kernel[1]
                e = layer(li, p, e) + gamma(k2 + 1) * layer(li, p, h.abs() + e)
                h = layer(li, p, h)
            elif rounding == "exact":  # flatten: values moved only
                h, e = layer(li, p, h), layer(li, p, e)
            else:
                raise _no_rounding(li)
            if li.activation is None:
                out[f"f{li.index}"] = (h.numpy(), e.numpy())
                q[f"f{li.index}"] = (h, e)
                continue
            out[f"a{li.index}"] = (h.numpy(), e.numpy())
            slope = p[li.slope_param] if li.slope_param else li.slope_value
            act = ACTIVATIONS[li.activation]
            if act.kink:
                flag(h.abs() <= e)
            if act.exact:  # relu: 0 wherever a < 0 (unambiguously, or the sample is flagged)
                e = e * (h > 0)
            else:
                lip = act.lipschitz if act.lipschitz is not None else torch.clamp(torch.as_tensor(slope).abs(), min=1.0)
                e = lip * e + 4 * U * reference.ACTIVATIONS[li.activation](h, slope).abs()
            h = reference.ACTIVATIONS[li.activation](h, slope)
            out[f"f{li.index}"] = (h.numpy(), e.numpy())
            q[f"f{li.index}"] = (h, e)
        if net.output_shape == (1,) and net.target.shape == ():
            h, e = h[:, 0], e[:, 0]
        kink = LOSS_RULES[net.loss.type].kink
        if y is not None and kink is not None:
            t = torch.as_tensor(np.asarray(y, dtype=np.float64))
            corner = kink(h, t)
            flag(corner.abs() <= t.abs() * e + e + 4 * U * (t.abs() * h.abs() + 1))
    return bad.numpy(), out
