"""The lecture's network, explained when `derive explain` is given no spec.

a1 = w1·x + b1, f1 = σ(a1), a2 = w2·f1, f2 = σ(a2), a3 = w3·f2, ŷ = f3 = σ(a3),
L = ½(y − ŷ)²: "a function of FOUR parameters and FOUR layers" (CMSC 491/691, Lecture 9).
"""

from __future__ import annotations

from derive.network import Linear, Loss, Network, Port


def lecture_network() -> Network:
    return Network(
        "lecture",
        layers=(
            Linear(weight="w1", bias="b1", activation="sigmoid"),
            Linear(weight="w2", bias=False, activation="sigmoid"),
            Linear(weight="w3", bias=False, activation="sigmoid"),
        ),
        input=Port("x"),
        target=Port("y"),
        loss=Loss("l2"),
    )
