"""flatten: a (c, h, w) volume as a vector, f[c·H·W + h·W + w] = f_prev[c,h,w], in C order (as torch flattens).

Its local partial is sympy.diff of the delta form f[n] = Σ_{c,h,w} [n = c·H·W + h·W + w]·f_prev[c,h,w],
so ∂L/∂f_prev[c,h,w] = ∂L/∂f[c·H·W + h·W + w]: the upstream gradient read back as a volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive import indices as ix
from derive import names
from derive.ir import nodes as ir
from derive.layers import checks
from derive.layers.base import Input, Layer, LayerRule, Node
from derive.indices import UNPRIME, c, c_, h, h_, n, w, w_

@dataclass(frozen=True)
class Flatten:
    """f[c·H·W + h·W + w] = f_prev[c,h,w]: a volume as a vector, in C order (as torch flattens (c, h, w))."""

    input: str | None = None  # the quantity it reads (default: the previous layer's output)

    kind = "flatten"


class FlattenRule(LayerRule):
    kind = "flatten"
    spec_type = Flatten
    keys = ("type",)
    has_activation = False
    view = True
    rounding = "exact"

    def parse(self, path: str, table: dict) -> Flatten:
        return Flatten()

    def resolve(self, path: str, index: int, spec, shape, claim, source) -> Layer:
        cin, hin, win = checks.volume(path, self.kind, shape)
        return Layer(index, self.kind, spec, shape, (cin * hin * win,), source)

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        cin, hin, win = layer.in_shape
        src = sym[layer.source]
        f = names.activation(layer.index)
        flat = sp.KroneckerDelta(n, c * hin * win + h * win + w) * src[c, h, w]
        local = ix.contract(ix.local(flat, src[c_, h_, w_]), [(c, 0, cin - 1), (h, 0, hin - 1), (w, 0, win - 1)])
        return [Node(f, sym[f][c * hin * win + h * win + w], src[c, h, w], layer.out_shape, (n,),
                     ((n, 0, layer.out_shape[0] - 1),), (Input(layer.source, "source", src[c_, h_, w_], local, UNPRIME),))]

    def lower_forward(self, name: str, layer: Layer, net):
        return ir.Flatten(sp.Symbol(layer.source, real=True))

    def lower_step(self, step, layer: Layer, net, lower):
        return ir.Unflatten(sp.Symbol(names.upstream(layer.index), real=True), *(sp.Integer(d) for d in layer.in_shape))

    def describe(self, layer: Layer) -> str:
        return "flatten, C order (as torch flattens (c, h, w))"

    def torch_module(self, layer) -> str:
        return "torch.nn.Flatten()"


RULE = FlattenRule()
