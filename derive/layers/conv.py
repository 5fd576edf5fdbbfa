"""Layer rules for volumes: conv2d, locally_connected and flatten, in index notation.

The lecture's neuron at output position r is h^r = Σ_ijk x^r_ijk W_ijk + b: a dot
product of a window of the input with a kernel.  Written per element,

    a[o,i,j] = Σ_{c,p,q} W[o,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o]          (conv2d)
    a[o,i,j] = Σ_{c,p,q} W[o,i,j,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o,i,j]  (locally connected)

with x_pad the zero-padded input, a named forward quantity (∂L/∂x is then a crop of
∂L/∂x_pad).  Every gradient below is ``sympy.diff`` of these definitions followed by
Kronecker-delta elimination.  Two traps are handled explicitly:

* differentiation targets use primed indices (o', c', p', q', h', w') that occur nowhere
  bound, and are renamed only once no bound index of the same name is left;
* eliminating a delta with an affine argument, [h' = i·s + p] over p ∈ [0, kh), is only
  valid when h' − i·s lies in that range: the condition is kept as an Iverson bracket
  (``InRange``), never dropped (``deltasummation(..., no_piecewise=True)`` would drop it).
"""

from __future__ import annotations

import sympy as sp
from sympy.core.parameters import distribute

from derive.derivation import indices as ix
from derive import names
from derive.errors import DerivationError
from derive.tables.functions import ACTIVATION_FUNCTIONS

# Element indices: output (o, i, j), window (c, p, q), input position (c, h, w), flat n.
o, i, j, c, p, q, h, w, n = sp.symbols("o i j c p q h w n", integer=True)
# Differentiation targets: primed, never bound anywhere.
o_, i_, j_, c_, p_, q_, h_, w_ = sp.symbols("o' i' j' c' p' q' h' w'", integer=True)
_UNPRIME = {o_: o, i_: i, j_: j, c_: c, p_: p, q_: q, h_: h, w_: w}


class InRange(sp.Function):
    """[lo ≤ e ≤ hi]: the Iverson bracket left by eliminating a Kronecker delta with an affine argument."""

    nargs = 3
    is_integer = True

    def _sympystr(self, printer):
        e, lo, hi = (printer._print(a) for a in self.args)
        return f"[{lo} ≤ {e} ≤ {hi}]"

    def _latex(self, printer):
        e, lo, hi = (printer._print(a) for a in self.args)
        return r"[%s \le %s \le %s]" % (lo, e, hi)


def contract(body: sp.Expr, limits, ranged=()) -> sp.Expr:
    """Σ over ``limits`` of a product ``body``, each Kronecker delta that fixes a summation index eliminated.

    [e = k·s + idx] over idx ∈ [lo, hi] becomes idx := e − k·s; for an index in ``ranged`` the
    condition that this value lies in [lo, hi] stays as an Iverson bracket ``InRange``.  Other
    indices are known to be in range by construction (they index a tensor of that size).
    """
    with distribute(True):  # derive() turns distribution off for display; index arithmetic needs it
        return _contract(body, limits, ranged)


def _contract(body, limits, ranged):
    remaining = []
    for idx, lo, hi in limits:
        body = sp.expand(body)
        if body == 0:
            return sp.S.Zero
        if isinstance(body, sp.Add):
            raise DerivationError(f"index contraction: expected a product, got {body}")
        deltas = [d for d in sp.Mul.make_args(body) if isinstance(d, sp.KroneckerDelta) and idx in d.free_symbols]
        if not deltas:
            remaining.append((idx, lo, hi))
            continue
        d = min(deltas, key=lambda e: (len(e.free_symbols), sp.default_sort_key(e)))  # [w = w'] before [n = … + w]
        (value,) = sp.solve(d.args[0] - d.args[1], idx)
        body = (body / d).xreplace({idx: value})
        if idx in ranged:
            body = body * InRange(value, lo, hi)
    return sp.Sum(body, *remaining) if remaining else body


# ----------------------------------------------------------------------------- forward


def forward(li, sym: dict, prev, definition) -> tuple[list, object, tuple]:
    """Forward definitions of a volume layer: (definitions, its output tensor, activation substitution)."""
    if li.kind == "flatten":
        cin, hin, win = li.in_shape
        f = ix.tensor(names.activation(li.index), li.out_shape)
        sym[str(f)] = f
        d = definition(str(f), f[c * hin * win + h * win + w], prev[c, h, w], li.out_shape, li.index)
        return [d], f, None
    defs = []
    src = prev
    if li.padded:
        xp = ix.tensor(li.padded, (1, 1, 1))
        sym[li.padded] = xp
        pad = li.padding
        shape = (li.in_shape[0], li.in_shape[1] + 2 * pad, li.in_shape[2] + 2 * pad)
        defs.append(definition(li.padded, xp[c, h, w], prev[c, h - pad, w - pad], shape, li.index))
        src = xp
    a = ix.tensor(names.pre_activation(li.index), li.out_shape)
    f = ix.tensor(names.activation(li.index), li.out_shape)
    sym[str(a)] = a
    sym[str(f)] = f
    defs.append(definition(str(a), a[o, i, j], _conv_rhs(li, sym, src), li.out_shape, li.index))
    f_rhs = ACTIVATION_FUNCTIONS[li.spec.activation](a[o, i, j], sp.Float(li.slope_value or 0.0))
    defs.append(definition(str(f), f[o, i, j], f_rhs, li.out_shape, li.index))
    return defs, f, (f_rhs, f[o, i, j])


def _conv_rhs(li, sym, src) -> sp.Expr:
    w_ = sym[li.weight]
    s = li.stride
    cin = li.in_shape[0]
    kh, kw = li.kernel
    wel = w_[o, c, p, q] if li.kind == "conv2d" else w_[o, i, j, c, p, q]
    body = sp.Mul(wel, src[c, s * i + p, s * j + q], evaluate=False)
    total = sp.Sum(body, (c, 0, cin - 1), (p, 0, kh - 1), (q, 0, kw - 1))
    if li.bias is None:
        return total
    b = sym[li.bias]
    return sp.Add(total, b[o] if li.kind == "conv2d" else b[o, i, j], evaluate=False)


# ----------------------------------------------------------------------------- backward


def backward(li, pos: int, net, sym: dict, forward_defs, act, up_expr, Step, Factor) -> tuple[list, sp.Expr]:
    """Backward steps of a volume layer (δ, parameter gradients, the upstream of the layer below)."""
    with distribute(True):  # index arithmetic (i·s + p − h) needs SymPy's usual evaluation
        return _backward(li, pos, net, sym, forward_defs, act, up_expr, Step, Factor)


def _backward(li, pos, net, sym, forward_defs, act, up_expr, Step, Factor):
    l = li.index
    steps = []
    if li.kind == "flatten":
        if pos == 0:
            return steps, up_expr
        cin, hin, win = li.in_shape
        up = sym.setdefault(names.upstream(l), ix.tensor(names.upstream(l), li.out_shape))
        below = net.info[pos - 1]
        fb = sym[names.activation(below.index)]
        # f_l[n] = Σ_{c,h,w} f_{l-1}[c,h,w]·[n = c·H·W + h·W + w]; ∂/∂f_{l-1}[c',h',w'] contracted by SymPy
        flat = sp.KroneckerDelta(n, c * hin * win + h * win + w) * fb[c, h, w]
        local = contract(sp.diff(flat, fb[c_, h_, w_]), [(c, 0, cin - 1), (h, 0, hin - 1), (w, 0, win - 1)])
        g = contract(up[n] * local, [(n, 0, li.out_shape[0] - 1)]).xreplace(_UNPRIME)
        nxt = sym.setdefault(names.upstream(below.index), ix.tensor(names.upstream(below.index), below.out_shape))
        steps.append(Step(str(nxt), "upstream", below.index, nxt[c, h, w], g,
                          (Factor(f"dL/df{l}", up[n], reused=True),
                           Factor(f"df{l}/df{below.index}", local.xreplace(_UNPRIME))),
                          below.out_shape, g))
        return steps, g

    f_rhs, f_el = act
    a_el = sym[names.pre_activation(l)][o, i, j]
    up = sym.setdefault(names.upstream(l), ix.tensor(names.upstream(l), li.out_shape))
    delta = ix.tensor(names.delta(l), li.out_shape)
    sym[str(delta)] = delta
    d_el = delta[o, i, j]
    dfda = sp.diff(f_rhs, a_el).subs(f_rhs, f_el) if f_rhs != a_el else sp.S.One
    fa = Factor(f"d{names.activation(l)}/d{names.pre_activation(l)}", dfda)
    steps.append(Step(str(delta), "delta", l, d_el, up[o, i, j] * dfda,
                      (Factor(f"dL/d{names.activation(l)}", up[o, i, j], reused=True), fa),
                      li.out_shape, up[o, i, j] * dfda))

    a_rhs = next(d.rhs for d in forward_defs if d.name == names.pre_activation(l))
    out_limits = [(o, 0, li.out_shape[0] - 1), (i, 0, li.out_shape[1] - 1), (j, 0, li.out_shape[2] - 1)]
    window = [lim for lim in a_rhs.atoms(sp.Sum)][0].limits  # (c, p, q) with their ranges
    conv = li.kind == "conv2d"
    for role, pname in (("weight", li.weight), ("bias", li.bias)):
        if pname is None:
            continue
        p_sym = sym[pname]
        if role == "weight":
            target = p_sym[o_, c_, p_, q_] if conv else p_sym[o_, i_, j_, c_, p_, q_]
        else:
            target = p_sym[o_] if conv else p_sym[o_, i_, j_]
        local = _local(a_rhs, target, window)
        g = contract(d_el * local, out_limits)
        lhs = target.xreplace(_UNPRIME)
        shape = next(pr.shape for pr in net.params if pr.name == pname)
        steps.append(Step(names.grad(pname), "param", l, sym.setdefault(names.grad(pname), ix.tensor(names.grad(pname), shape))[lhs.indices],
                          g.xreplace(_UNPRIME),
                          (Factor(f"delta{l}", d_el, reused=True),
                           Factor(f"d{names.pre_activation(l)}/d{pname}", local.xreplace(_UNPRIME))),
                          shape, g.xreplace(_UNPRIME), param=pname))

    if pos == 0:
        return steps, up_expr
    below = net.info[pos - 1]
    fb = sym[names.activation(below.index)]
    src_name = li.padded or names.activation(below.index)
    src = sym[src_name]
    src_shape = next(d.shape for d in forward_defs if d.name == li.padded) if li.padded else li.in_shape
    # ∂L/∂src[c',h',w'] = Σ_{o,i,j} δ[o,i,j]·∂a[o,i,j]/∂src[c',h',w']: the window sum over p, q is eliminated
    # with its range kept, so the result says which (i, j) reach the input position.
    local = _local(a_rhs, src[c_, h_, w_], window, ranged=(p, q))
    g = sp.Sum(d_el * local, *out_limits).xreplace(_UNPRIME)
    gname = names.grad(src_name) if li.padded else names.upstream(below.index)
    gsym = sym.setdefault(gname, ix.tensor(gname, src_shape))
    steps.append(Step(gname, "upstream", below.index, gsym[c, h, w], g,
                      (Factor(f"delta{l}", d_el, reused=True),
                       Factor(f"d{names.pre_activation(l)}/d{src_name}", local.xreplace(_UNPRIME))),
                      src_shape, g))
    if li.padded:
        # x_pad[c'',h'',w''] = Σ_{c,h,w} x[c,h,w]·[c'' = c][h'' = h + P][w'' = w + P]: crop the padding
        pad = li.padding
        cc, hh, ww = sp.symbols("c'' h'' w''", integer=True)
        cin, hin, win = li.in_shape
        pad_def = (sp.KroneckerDelta(cc, c) * sp.KroneckerDelta(hh, h + pad) * sp.KroneckerDelta(ww, w + pad)
                   * fb[c, h, w])
        local_p = contract(sp.diff(pad_def, fb[c_, h_, w_]), [(c, 0, cin - 1), (h, 0, hin - 1), (w, 0, win - 1)])
        g2 = contract(gsym[cc, hh, ww] * local_p,
                      [(cc, 0, src_shape[0] - 1), (hh, 0, src_shape[1] - 1), (ww, 0, src_shape[2] - 1)])
        g2 = g2.xreplace(_UNPRIME)
        nxt = sym.setdefault(names.upstream(below.index), ix.tensor(names.upstream(below.index), below.out_shape))
        steps.append(Step(str(nxt), "upstream", below.index, nxt[c, h, w], g2,
                          (Factor(f"dL/d{src_name}", gsym[c, h, w], reused=True),
                           Factor(f"d{src_name}/d{names.activation(below.index)}", local_p.xreplace(_UNPRIME))),
                          below.out_shape, g2))
        g = g2
    return steps, g


def _local(a_rhs: sp.Expr, target, window, ranged=()) -> sp.Expr:
    """∂a[o,i,j]/∂target by sympy.diff, with the window sum's deltas eliminated."""
    d = sp.diff(a_rhs, target)
    return d.replace(lambda e: isinstance(e, sp.Sum), lambda e: contract(e.function, e.limits, ranged))


# ----------------------------------------------------------------------------- lowering


def _s(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def _source(li, net) -> str:
    """The array a conv layer's windows read: its padded input, the network input, or f_{l-1}."""
    if li.padded:
        return li.padded
    return net.input.name if li.index == 1 else names.activation(li.index - 1)


def lower_definition(d, li, net):
    """The kernel-IR expression of a volume layer's forward definition, or None for an elementwise one."""
    from derive.ir.nodes import ConvForward, Flatten, LocalForward, Pad

    prev = net.input.name if li.index == 1 else names.activation(li.index - 1)
    if li.kind == "flatten":
        return Flatten(_s(prev))
    if d.name == li.padded:
        return Pad(_s(prev), sp.Integer(li.padding))
    if d.name == names.pre_activation(li.index):
        node = ConvForward if li.kind == "conv2d" else LocalForward
        b = _s(li.bias) if li.bias else sp.S.Zero
        return node(_s(_source(li, net)), _s(li.weight), b, *_geometry(li))
    return None


def _geometry(li):
    return (sp.Integer(li.stride), sp.Integer(li.kernel[0]), sp.Integer(li.kernel[1]), sp.Integer(li.index))


def lower_step(s, li, net):
    """The kernel-IR expression of a backward step a volume layer produced (a parameter gradient
    or the upstream of the layer below), or None for an elementwise one (δ)."""
    from derive.ir.nodes import (BatchSum, ConvBiasGrad, ConvInputGrad, ConvWeightGrad, Crop, LocalInputGrad,
                            LocalWeightGrad, Unflatten)

    if s.kind not in ("param", "upstream"):
        return None  # ∂L/∂ŷ of the loss and δ are elementwise
    if li.kind == "flatten":
        return Unflatten(_s(names.upstream(li.index)), *(sp.Integer(n) for n in li.in_shape))
    delta = _s(names.delta(li.index))
    conv = li.kind == "conv2d"
    if s.kind == "param" and s.param == li.weight:
        node = ConvWeightGrad if conv else LocalWeightGrad
        return node(delta, _s(_source(li, net)), *_geometry(li))
    if s.kind == "param" and s.param == li.bias:
        return ConvBiasGrad(delta, sp.Integer(li.index)) if conv else BatchSum(delta)
    if s.kind == "upstream":
        if li.padded and s.name == names.upstream(li.index - 1):
            return Crop(_s(names.grad(li.padded)), sp.Integer(li.padding))
        hh, ww = (n + 2 * li.padding for n in li.in_shape[1:])
        node = ConvInputGrad if conv else LocalInputGrad
        return node(delta, _s(li.weight), sp.Integer(li.stride), sp.Integer(hh), sp.Integer(ww), sp.Integer(li.index))
    return None


def volume_layers(der, net) -> tuple:
    """The conv2d / locally_connected layers as the Triton generator needs them."""
    from derive.ir.nodes import VolumeLayer

    out = []
    for pos, li in enumerate(net.info):
        if getattr(li, "kind", "linear") not in ("conv2d", "locally_connected"):
            continue
        prev = net.input.name if li.index == 1 else names.activation(li.index - 1)
        formulas = [("forward", _line(next(d for d in der.forward if d.name == names.pre_activation(li.index))))]
        formulas.append(("weight", _line(der.gradient(li.weight))))
        if li.bias:
            formulas.append(("bias", _line(der.gradient(li.bias))))
        if pos > 0:
            up = [s for s in der.backward if s.kind == "upstream" and s.layer == li.index - 1]
            formulas.append(("input", "; ".join(_line(s) for s in up)))
        out.append(VolumeLayer(li.index, li.kind, li.in_shape, li.out_shape, li.stride, li.kernel, li.padding,
                               li.weight, li.bias, prev, pos == 0, pos > 0, tuple(formulas)))
    return tuple(out)


def _line(d) -> str:
    from derive.explain.display import text

    return f"{text(d.lhs)} = {text(d.rhs)}"
