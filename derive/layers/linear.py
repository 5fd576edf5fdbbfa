"""The linear layer: a = W·f_prev + b (the lecture's a1 = w1·x + b1), then f = activation(a).

Element-wise, a[j] = Σ_k W[j,k]·f[k] + b[j]; with ``out`` left out it is the lecture's scalar
layer a = w·f + b.  The local partials are sympy.diff of that definition at fresh indices
(W[p,q], b[p], f[p]), renamed back once the engine has contracted them with δ[j]:
∂L/∂W[j,k] = δ[j]·f[k], ∂L/∂b[j] = δ[j], ∂L/∂f_prev[j] = Σ_i δ[i]·W[i,j].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from derive import indices as ix
from derive import names
from derive.display import Tex, name_latex
from derive.errors import DerivationError, SpecError
from derive.ir.nodes import Outer
from derive.layers import checks
from derive.layers.base import Input, Layer, LayerRule, Node, Param
from derive.tables.activations import ACTIVATIONS, IDENTITY


@dataclass(frozen=True)
class Linear:
    """a = W f_prev + b, then f = activation(a).

    ``out=None`` is the lecture's scalar-to-scalar layer (a scalar weight).  Names left
    as None get the defaults of ``derive.names`` when the network is built.
    """

    out: int | None = None
    weight: str | None = None
    bias: str | None | bool = None
    activation: str = IDENTITY
    slope: float | str | None = None  # leaky_relu: a float (default 0.01); prelu: the parameter's name
    slope_init: float | None = None  # prelu's initial slope (default 0.25, as torch.nn.PReLU)
    input: str | None = None  # the quantity it reads (default: the previous layer's output)

    kind = "linear"


class LinearRule(LayerRule):
    kind = "linear"
    spec_type = Linear
    step_comment = "chain"
    expandable = True
    rounding = "dot"
    keys = ("type", "out", "weight", "bias", "activation", "slope", "slope_init")

    def parse(self, path: str, table: dict) -> Linear:
        kwargs: dict = {}
        if "out" in table:
            kwargs["out"] = checks.integer(f"{path}.out", table["out"])
        checks.names_and_activation(path, table, kwargs)
        if "slope" in table:  # a number (leaky_relu) or a name (prelu): resolve checks which one fits
            slope = table["slope"]
            kwargs["slope"] = slope if isinstance(slope, str) else checks.number(f"{path}.slope", slope, "a number")
        if "slope_init" in table:
            kwargs["slope_init"] = checks.number(f"{path}.slope_init", table["slope_init"], "a number")
        return Linear(**kwargs)

    def resolve(self, path: str, index: int, spec: Linear, shape, claim, source) -> Layer:
        if len(shape) == 3:
            raise SpecError(f"{path}.type", f"expected a flatten layer before a linear layer on a volume "
                                            f"(this layer's input has shape {list(shape)})")
        out = spec.out
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise SpecError(f"{path}.out", f"expected a positive integer, got {out!r}")
        if out is None and shape != ():
            raise SpecError(f"{path}.out", f"expected 'out' (this layer's input is a vector of {shape[0]}); "
                                           "leave 'out' out only for a scalar-to-scalar layer")
        vector = out is not None
        slope = getattr(ACTIVATIONS.get(spec.activation), "slope", None)
        if slope == "parameter" and spec.slope is not None and not isinstance(spec.slope, str):
            raise SpecError(f"{path}.slope", f"expected a name (string) for {spec.activation}'s learnable slope, "
                                             f"got {spec.slope!r}")
        if slope == "constant" and isinstance(spec.slope, str):
            raise SpecError(f"{path}.slope", f"expected a number ({spec.activation}'s negative slope), "
                                             f"got {spec.slope!r}")
        act, slope_value = checks.activation(path, spec)
        weight, bias = checks.weight_and_bias(path, index, spec, vector, claim)
        slope_param = slope_init = None
        if ACTIVATIONS[act].slope == "parameter":
            slope_param = claim(f"{path}.slope", spec.slope if spec.slope is not None else names.default_slope(index))
            init = 0.25 if spec.slope_init is None else spec.slope_init
            if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
                raise SpecError(f"{path}.slope_init", f"expected a number, got {spec.slope_init!r}")
            slope_init = float(init)
        elif spec.slope_init is not None:
            raise SpecError(f"{path}.slope_init", f"'slope_init' belongs to prelu, not {act}")
        in_view = shape if (not vector or shape) else (1,)  # a scalar feeding a vector layer: one column
        fan_in = in_view[0] if in_view else 1
        params = [Param(weight, (out, fan_in) if vector else (), index, "weight", fan_in)]
        if bias is not None:
            params.append(Param(bias, (out,) if vector else (), index, "bias", fan_in))
        if slope_param is not None:
            params.append(Param(slope_param, (), index, "slope", fan_in))
        return Layer(index, self.kind, spec, in_view, (out,) if vector else (), source, tuple(params),
                     weight, bias, act, slope_value, slope_param, slope_init)

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        w = sym[layer.weight]
        b = sym[layer.bias] if layer.bias else None
        src = sym[layer.source]
        a = names.pre_activation(layer.index)
        j, k, p, q = ix.j, ix.k, ix.p, ix.q
        # Unevaluated, so that it prints in the lecture's order (w1·x + b1); diff evaluates it.
        if not layer.vector:
            prod = sp.Mul(w, src, evaluate=False)
            rhs = sp.Add(prod, b, evaluate=False) if b is not None else prod
            inputs = [Input(layer.weight, "weight", w, ix.local(rhs, w))]
            if b is not None:
                inputs.append(Input(layer.bias, "bias", b, ix.local(rhs, b)))
            inputs.append(Input(layer.source, "source", src, ix.local(rhs, src)))
            return [Node(a, sym[a], rhs, (), (), (), tuple(inputs))]
        if isinstance(src, sp.Symbol):
            # a scalar feeding a vector layer: its weight (out, 1) has one column, a[j] = W[j, 0]·f + b[j]
            prod = sp.Mul(w[j, 0], src, evaluate=False)
            src_target, back = src, {j: ix.i}
        else:
            prod = sp.Sum(sp.Mul(w[j, k], src[k], evaluate=False), (k, 0, layer.in_shape[0] - 1))
            src_target, back = src[p], {j: ix.i, p: j}
        rhs = sp.Add(prod, b[j], evaluate=False) if b is not None else prod
        # ∂a[i]/∂W[j,k]: i the layer's output, (j, k) the parameter element; the one column is k = 0
        one_column = {sp.KroneckerDelta(0, q): sp.S.One} if isinstance(src, sp.Symbol) else {}
        inputs = [Input(layer.weight, "weight", w[p, q], ix.local(rhs, w[p, q]), {j: ix.i, p: j, q: k, **one_column})]
        if b is not None:
            inputs.append(Input(layer.bias, "bias", b[p], ix.local(rhs, b[p]), {j: ix.i, p: j}))
        inputs.append(Input(layer.source, "source", src_target, ix.local(rhs, src_target), back))
        return [Node(a, sym[a][j], rhs, layer.out_shape, (j,), ((j, 0, layer.out_shape[0] - 1),), tuple(inputs))]

    def lower_step(self, step, layer: Layer, net, lower):
        """A matrix's gradient δ[j]·f[k] summed over the batch is an outer product."""
        if step.kind != "param" or len(step.shape) != 2:
            return None
        d, f = sp.Mul.make_args(step.rhs)
        if not isinstance(d, sp.Indexed) or d.indices[0] != ix.j:
            d, f = f, d
        if not (isinstance(d, sp.Indexed) and isinstance(f, (sp.Indexed, sp.Symbol))):
            raise DerivationError(f"step {step.name}: expected δ[j]·f[k], got {step.rhs}")
        return Outer(lower(d), lower(f))

    def explain_sentence(self, layer: Layer) -> None:
        return None  # the lecture's chain reads best without a sentence beside a1 = w1·x + b1

    def gradient_notes(self, net, layer: Layer, param: str) -> list[tuple]:
        """The matrix form of a dense layer's gradients."""
        if not layer.vector or param not in (layer.weight, layer.bias):
            return []
        l, prev = layer.index, layer.source
        if param == layer.weight:
            return [("matrix form: ", Tex(f"∂L/∂{param} = δ{l} · {prev}ᵀ", rf"\frac{{\partial L}}{{\partial "
                     rf"{name_latex(param)}}} = \delta_{{{l}}} \, {name_latex(prev)}^\top"),
                     "  (an outer product, summed over the batch)")]
        return [("matrix form: ", Tex(f"∂L/∂{param} = δ{l}", rf"\frac{{\partial L}}{{\partial {name_latex(param)}}}"
                 rf" = \delta_{{{l}}}"), "  (summed over the batch)")]

    def describe(self, layer: Layer) -> str:
        if not layer.vector:
            return "linear: a scalar weight" + (" and bias" if layer.bias else "")
        return f"linear: {layer.out_shape[0]}×{layer.in_shape[0]} weights" + (" and a bias" if layer.bias else "")

    def torch_module(self, layer) -> str:
        bias = "" if layer.bias else ", bias=False"
        return f"torch.nn.Linear({math.prod(layer.in_shape)}, {math.prod(layer.out_shape)}{bias})"

    def torch_params(self, layer) -> tuple:
        fan_out, fan_in = math.prod(layer.out_shape), math.prod(layer.in_shape)
        return tuple((name, attr, shape) for name, attr, shape in
                     ((layer.weight, "weight", (fan_out, fan_in)), (layer.bias, "bias", (fan_out,))) if name)

    def dense_cost(self, layer) -> tuple[int, int, int]:
        w = math.prod(layer.in_shape) * math.prod(layer.out_shape)
        return w, w, math.prod(layer.out_shape)


RULE = LinearRule()
