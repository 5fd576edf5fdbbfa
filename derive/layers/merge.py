"""add and concat: the layers that read several quantities, which make a network a graph.

    a[idx] = f_1[idx] + f_2[idx] + …, then f = activation(a)           (add: a residual connection)
    f[i]   = f_m[i − offset_m] for the input m whose block holds i     (concat, along features or channels)

A quantity read by several layers gets its gradient summed over them (the multivariate chain
rule, derive/derivation/engine.py); these rules only give each input's local partial, sympy.diff
of the definition at fresh indices, as every rule does.  add's partial is a Kronecker delta per
index (∂a[j]/∂f_1[j] = 1, element by element); concat's is the delta of its block, ∂f[i]/∂f_m[j] =
[i = offset_m + j], so ∂L/∂f_m is the slice of ∂L/∂f that f_m filled.  A projection on a skip path is an ordinary
layer (a 1×1 conv2d, a linear) placed on that path.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive import indices as ix
from derive import names
from derive.errors import SpecError
from derive.ir import nodes as ir
from derive.layers import checks
from derive.layers.base import Input, Layer, LayerRule, Node
from derive.indices import UNPRIME, c, c_, h, h_, i, j, k, o, p, w, w_
from derive.tables.activations import IDENTITY


def _inputs(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Add:
    """a = f_1 + f_2 + … (two or more quantities of one shape), then f = activation(a)."""

    inputs: tuple[str, ...]
    activation: str = IDENTITY
    slope: float | None = None  # leaky_relu's negative slope (default 0.01)

    kind = "add"

    def __post_init__(self):
        object.__setattr__(self, "inputs", _inputs(self.inputs))


@dataclass(frozen=True)
class Concat:
    """f = [f_1; f_2; …]: vectors end to end (features), or volumes of one height and width (channels)."""

    inputs: tuple[str, ...]

    kind = "concat"

    def __post_init__(self):
        object.__setattr__(self, "inputs", _inputs(self.inputs))


class Stacked(sp.Function):
    """concat(f1, f2, …) as a forward definition prints it (the generated code calls ir.Concat)."""

    is_real = True

    def _sympystr(self, printer):
        return "concat(%s)" % ", ".join(printer._print(a) for a in self.args)

    def _latex(self, printer):
        return r"\operatorname{concat}(%s)" % ", ".join(printer._print(a) for a in self.args)


def _element(shape) -> tuple[tuple, tuple, dict]:
    """(output indices, fresh target indices, their renaming) for add: element by element, the output
    and the input share their indices (∂a[j]/∂f[j] = 1)."""
    if len(shape) == 3:
        return (c, h, w), (c_, h_, w_), UNPRIME
    if len(shape) == 1:
        return (j,), (p,), {p: j}
    return (), (), {}


def _block(shape) -> tuple[tuple, tuple, dict]:
    """The same for concat, whose output indices differ from its input's: (o, i, j) over (c, h, w), or i over j,
    as a dense layer writes ∂a[i]/∂f[j], so that ∂f3[i]/∂f1[j] = [i = j + offset] reads as it should."""
    if len(shape) == 3:
        return (o, i, j), (c_, h_, w_), UNPRIME
    return (j,), (p,), {j: i, p: j}


def _limits(out, shape) -> tuple:
    return tuple((i, 0, size - 1) for i, size in zip(out, shape))


class AddRule(LayerRule):
    kind = "add"
    spec_type = Add
    keys = ("type", "inputs", "activation", "slope")
    multi_input = True
    rounding = "sum"
    torch_merge = "sum(_hs[1:], _hs[0])"

    def parse(self, path: str, table: dict) -> Add:
        kwargs: dict = {"inputs": table["inputs"]}
        if "activation" in table:
            kwargs["activation"] = checks.string(f"{path}.activation", table["activation"])
        if "slope" in table:
            kwargs["slope"] = checks.number(f"{path}.slope", table["slope"], "a number (leaky_relu's negative slope)")
        return Add(**kwargs)

    def resolve(self, path: str, index: int, spec: Add, shape, claim, source) -> Layer:
        first = shape[0]
        for name, s in zip(source[1:], shape[1:]):
            if s != first:
                raise SpecError(f"{path}.inputs", f"expected quantities of one shape to add; {source[0]} is "
                                                  f"{list(first)}, {name} is {list(s)}")
        act, slope_value = checks.activation(path, spec, parameters=False)
        return Layer(index, self.kind, spec, first, first, source[0], activation=act, slope_value=slope_value,
                     inputs=tuple(source), in_shapes=tuple(shape))

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        out, fresh, rename = _element(layer.out_shape)
        srcs = [ix.elem(sym[s], *out) for s in layer.sources]
        rhs = sp.Add(*srcs, evaluate=False)
        inputs = []
        for s in layer.sources:
            target = ix.elem(sym[s], *fresh)
            inputs.append(Input(s, "source", target, ix.local(rhs, target), rename))
        a = names.pre_activation(layer.index)
        return [Node(a, ix.elem(sym[a], *out), rhs, layer.out_shape, out, _limits(out, layer.out_shape),
                     tuple(inputs))]

    def describe(self, layer: Layer) -> str:
        return f"add: {' + '.join(layer.sources)}, element by element (a residual connection)"

    def torch_module(self, layer) -> str:
        return ""  # the torch model's graph adds the inputs (torch_merge); its activation follows


class ConcatRule(LayerRule):
    kind = "concat"
    spec_type = Concat
    keys = ("type", "inputs")
    has_activation = False
    multi_input = True
    rounding = "exact"
    torch_merge = "torch.cat(_hs, dim=1)"  # features of (B, n), channels of (B, c, h, w)

    def parse(self, path: str, table: dict) -> Concat:
        return Concat(table["inputs"])

    def resolve(self, path: str, index: int, spec: Concat, shape, claim, source) -> Layer:
        ranks = {len(s) for s in shape}
        if ranks == {1}:
            out = (sum(s[0] for s in shape),)
        elif ranks == {3} and len({s[1:] for s in shape}) == 1:
            out = (sum(s[0] for s in shape), *shape[0][1:])
        else:
            got = ", ".join(f"{name} is {list(s)}" for name, s in zip(source, shape))
            raise SpecError(f"{path}.inputs", "expected vectors (joined along features) or volumes of one height "
                                              f"and width (joined along channels); {got}")
        return Layer(index, self.kind, spec, shape[0], out, source[0], inputs=tuple(source), in_shapes=tuple(shape))

    def offsets(self, layer: Layer) -> list[tuple[str, int, int]]:
        """(input, offset, size) of each input's block along features or channels."""
        out, at = [], 0
        for s, shape in zip(layer.sources, layer.in_shapes):
            out.append((s, at, shape[0]))
            at += shape[0]
        return out

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        f = names.activation(layer.index)
        out, fresh, rename = _block(layer.out_shape)
        volume = len(out) == 3
        inputs = []
        for s, at, size in self.offsets(layer):
            src = sym[s]
            # f[j] = Σ_k [j = offset + k]·f_m[k] (channels: f[o,i,j] = Σ_k [o = offset + k]·f_m[k,i,j])
            body = (sp.KroneckerDelta(out[0], at + k) * (src[k, i, j] if volume else src[k]))
            target = src[fresh] if volume else src[fresh[0]]
            local = ix.contract(ix.local(body, target), [(k, 0, size - 1)])
            inputs.append(Input(s, "source", target, local, rename))
        rhs = Stacked(*(sp.Symbol(s, real=True) for s in layer.sources))
        lhs = sym[f][out] if volume else sym[f][out[0]]
        return [Node(f, lhs, rhs, layer.out_shape, out, _limits(out, layer.out_shape), tuple(inputs))]

    def lower_forward(self, name: str, layer: Layer, net):
        return ir.Concat(*(sp.Symbol(s, real=True) for s in layer.sources))

    def lower_step(self, step, layer: Layer, net, lower):
        for s, at, size in self.offsets(layer):
            if s == step.wrt:
                return ir.Slice(sp.Symbol(names.upstream(layer.index), real=True), sp.Integer(at), sp.Integer(size))
        return None

    def describe(self, layer: Layer) -> str:
        axis = "channels" if len(layer.out_shape) == 3 else "features"
        return f"concat: {', '.join(layer.sources)} joined along {axis}"

    def torch_module(self, layer) -> str:
        return ""  # the torch model's graph concatenates the inputs (torch_merge)


ADD = AddRule()
CONCAT = ConcatRule()
