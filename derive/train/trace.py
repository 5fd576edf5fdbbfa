"""`derive trace`: the lecture's loop step by step with numbers (draw, predict, backpropagate, update).

The data order and the update are derive train's own (derive/train/loop.py): epoch e visits the samples in
np.random.default_rng([seed, e]).permutation(n), batch by batch, and each update is the generated module's
apply_update at step t, so the parameters after N steps are train's after the same N steps.
"""

from __future__ import annotations

import numpy as np

from derive.train.walk import walk  # re-exported: the records this module prints


def _list(v):
    return np.asarray(v, dtype=np.float64).tolist()


def record_json(rec: dict, der) -> dict:
    inter = rec["intermediates"]
    return {
        "step": rec["t"], "epoch": rec["epoch"], "samples": [int(i) for i in rec["indices"]],
        "x": _list(rec["x"]), "y": _list(rec["y"]),
        "forward": {d.name: _list(inter[d.name]) for d in der.forward if d.name in inter},
        "loss": float(rec["loss"]),
        "backward": {s.name: _list(inter[s.name]) for s in der.backward if s.name in inter},
        "update": {k: {"before": _list(rec["before"][k]), "step": _list(rec["after"][k] - rec["before"][k]),
                       "after": _list(rec["after"][k])} for k in rec["before"]},
    }


def record_text(rec: dict, der) -> str:
    from derive.evaluate import show
    from derive.display import text_name

    inter = rec["intermediates"]
    net = der.network
    one = len(rec["indices"]) == 1
    pick = (lambda v: np.asarray(v)[0]) if one else (lambda v: v)
    which = f"sample {int(rec['indices'][0]) + 1}" if one else f"samples {[int(i) + 1 for i in rec['indices']]}"
    out = [f"step {rec['t']} (epoch {rec['epoch']}, {which} of the data): "
           f"{net.input.name} = {show(pick(rec['x']))}, {net.target.name} = {show(pick(rec['y']))}",
           "  1. predict: " + ", ".join(f"{text_name(d.name)} = {show(pick(inter[d.name]))}"
                                        for d in der.forward if d.name in inter),
           f"     loss L = {show(rec['loss'])}" + ("" if one else " (the batch mean)"),
           "  2. backpropagate: " + ", ".join(
               f"{text_name(s.name)} = {show(pick(inter[s.name]) if s.kind != 'param' else inter[s.name])}"
               for s in der.backward if s.name in inter and s.kind in ("delta", "param"))]
    out.append(f"  3. update ({net.optimizer.type}, η0 = {net.optimizer.hyper['lr']:g}):")
    for k in rec["before"]:
        b, a = rec["before"][k], rec["after"][k]
        out.append(f"     {k}: {show(b)} + ({show(a - b)}) = {show(a)}")
    return "\n".join(out)
