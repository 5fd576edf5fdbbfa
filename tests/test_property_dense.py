"""Property: for random dense networks, the generated NumPy module (float64) and the fused
Triton kernel (float32, the interpreter on CPU) agree with torch.autograd.

Architectures: depth 1 to 4; widths 1 to 40, mostly small but with 9 to 40 often enough that
the tl.dot paths (every side padded to >= 16) run; every activation; every differentiable
loss; bias on or off; scalar or vector input, and scalar (lecture-style) layers where the
shape allows one.  Each example is built in Python, generated with generated_modules and run
on a batch of at most 9 (a few with BLOCK_B forced to 16).  The number of examples comes
from the hypothesis profile of tests/conftest.py ("ci": 15).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from hypothesis import event, example, given
from hypothesis import strategies as st

from derive import Linear, Loss, Network, Port

from derive.tables.activations import ACTIVATIONS as ACTIVATION_TABLE
from derive.tables.losses import LOSS_RULES, REAL
from derive.targets import codegen
from derive.targets.modules import generated_modules
from derive.verify import sample

from helpers import assert_close_to_torch, assert_matches_torch, random_params, triton_inputs, triton_outputs

# From the tables, so that a new activation or loss is tested without being named here.  The zero-one
# loss has no gradient to compare (every gradient is 0; tests/test_derivation.py checks that).
ACTIVATIONS = tuple(ACTIVATION_TABLE)
LOSSES = tuple(name for name in LOSS_RULES if name != "zero_one")
ONE_OUTPUT = tuple(name for name in LOSSES if LOSS_RULES[name].scalar_output)
REAL_TARGET = tuple(name for name in LOSSES if LOSS_RULES[name].target == REAL)

# Mostly 1..6; otherwise sizes around the padding and tl.dot boundaries (8 | 9, 16 | 17, 33).
WIDTHS = st.one_of(st.integers(1, 6), st.sampled_from([7, 8, 9, 15, 16, 17, 33, 40]))


@dataclass(frozen=True)
class Case:
    net: Network
    seed: int
    batch: int
    block_b: int | None

    def __repr__(self):  # what hypothesis prints for a failing example
        layers = ", ".join(f"Linear(out={l.out}, activation={l.activation!r}, bias={l.bias!r})" for l in self.net.layers)
        return (f"Case(input={self.net.input.shape}, target={self.net.target.shape}, layers=[{layers}], "
                f"loss={self.net.loss}, seed={self.seed}, batch={self.batch}, block_b={self.block_b})")


def _network(input_shape, layers, loss, target_shape=()) -> Network:
    return Network("prop", layers, input=Port("x", input_shape), target=Port("y", target_shape), loss=loss)


@st.composite
def cases(draw) -> Case:
    depth = draw(st.integers(1, 4))
    loss = draw(st.sampled_from(LOSSES))
    shape = draw(st.one_of(st.just(()), st.tuples(WIDTHS)))
    input_shape = shape
    layers = []
    for i in range(depth):
        last = i == depth - 1
        if last and loss in ONE_OUTPUT:
            out = draw(st.sampled_from([1, None])) if shape == () else 1
        elif last and loss == "cross_entropy":
            out = draw(WIDTHS.filter(lambda n: n >= 2))
        elif shape == ():
            out = draw(st.one_of(st.none(), WIDTHS))  # a scalar layer, or a vector layer on a scalar
        else:
            out = draw(WIDTHS)
        activation = draw(st.sampled_from(ACTIVATIONS))
        slope = draw(st.sampled_from([None, 0.2])) if activation == "leaky_relu" else None
        layers.append(Linear(out=out, bias=None if draw(st.booleans()) else False, activation=activation,
                             slope=slope))
        shape = () if out is None else (out,)
    if loss in REAL_TARGET and shape == (1,):
        target = draw(st.sampled_from([(), (1,)]))
    elif loss in REAL_TARGET:
        target = shape
    else:
        target = ()
    net = _network(input_shape, layers, Loss(loss, draw(st.sampled_from(["mean", "sum"]))), target)
    return Case(net, draw(st.integers(0, 2**16)), draw(st.integers(1, 9)), draw(st.sampled_from([None, None, 16])))


def _dot_layers(net: Network) -> int:
    """Vector layers whose sides both pad to >= 16, the ones the printer gives tl.dot."""
    return sum(1 for li in net.info if li.vector and li.in_shape and li.in_shape[0] > 8 and li.spec.out > 8)


def _uses_dot(net: Network) -> bool:
    """Whether the kernel contracts on tensor cores: through the chunked tl.dot helpers, the only place a
    tl.dot is printed (a whole-operand tl.dot spilled on the GPU)."""
    text = codegen.generate(net, "<python>", ("triton",))["prop_triton.py"]
    dots = [ln for ln in text.splitlines() if "tl.dot(" in ln]
    assert all("input_precision=DOT_PRECISION" in ln for ln in dots), dots
    return "_dot_matvec(" in text and len(dots) == len(re.findall(r"^def _dot_", text, re.M))


# Explicit examples, run every time: the tl.dot paths, a lecture-style scalar chain, the widest case.
DOT = Case(_network((20,), [Linear(out=17, activation="tanh"), Linear(out=33, activation="prelu", bias=False),
                            Linear(out=3)], Loss("cross_entropy")), 1, 9, 16)
CHAIN = Case(_network((), [Linear(activation="softplus"), Linear(activation="leaky_relu", bias=False),
                           Linear(activation="sigmoid")], Loss("binary_cross_entropy", "sum")), 2, 7, None)
WIDE = Case(_network((40,), [Linear(out=40, activation="sigmoid")] * 3 + [Linear(out=40, activation="relu")],
                     Loss("l1"), (40,)), 3, 9, None)


def test_explicit_examples_cover_tl_dot():
    assert _uses_dot(DOT.net) and _uses_dot(WIDE.net) and not _uses_dot(CHAIN.net)
    assert _dot_layers(DOT.net) == 2 and _dot_layers(WIDE.net) == 4 and _dot_layers(CHAIN.net) == 0


@example(case=DOT)
@example(case=CHAIN)
@example(case=WIDE)
@given(case=cases())
def test_generated_code_matches_torch(case, triton_device_name):
    net = case.net
    event(f"loss {net.loss.type}, depth {net.depth}")
    event("tl.dot layers" if _dot_layers(net) else "no tl.dot layer")
    with generated_modules(net, "<python>") as mods:
        npm, trm = mods["numpy"], mods["triton"]
        rng = np.random.default_rng(case.seed)
        params = random_params(npm, rng)
        x, y = sample(net, rng, case.batch)
        # float64 against float64: only the rounding order differs
        assert_matches_torch(net, npm, params, x, y, 1e-10, f"numpy f64 {case!r}")
        # float32 kernel against float64, norm-wise rel. 1e-4 (helpers.py: floors for ill-conditioned draws)
        tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
        got = triton_outputs(trm, tp, tx, ty, net=net, block_b=case.block_b)
        assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"triton f32 {case!r}", float32=True)
