"""The lecture's training loop as a generator of per-step records: what derive trace prints and the
plots draw.  A leaf of the train stage (NumPy only), so that the plots need not import the printing."""

from __future__ import annotations

import numpy as np

from derive.errors import DeriveError


def walk(net, npm, x, y, steps: int, batch: int, seed: int = 0):
    """Yield one record per step: t, epoch, indices, batch, intermediates, loss, gradients, θ and the
    optimizer state before and after."""
    if steps < 1:
        raise DeriveError(f"--steps: expected a positive integer, got {steps}")
    if batch < 1:
        raise DeriveError(f"--batch: expected a positive integer, got {batch}")
    if net.optimizer.type == "lbfgs":
        raise DeriveError("--optimizer lbfgs: a full-batch scipy line search has no step to trace; pick another")
    params = npm.init_params(seed)
    state = npm.init_state(params)
    n, t, epoch = len(x), 0, 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            t += 1
            xb, yb = x[idx], y[idx]
            inter = npm.intermediates(params, xb, yb)
            loss, grads = npm.value_and_gradients(params, xb, yb)
            new, new_state = npm.apply_update(params, state, grads, t)
            yield {"t": t, "epoch": epoch + 1, "indices": idx, "x": xb, "y": yb, "intermediates": inter,
                   "loss": loss, "grads": grads, "before": params, "after": new,
                   "state": state, "state_after": new_state}
            params, state = new, new_state
            if t == steps:
                return
        epoch += 1
