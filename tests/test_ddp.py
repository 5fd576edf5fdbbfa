"""DistributedDataParallel over the generated torch module, gloo on the CPU.

Two processes each take one half of a batch, run one DDP step (forward(x, y) is the batch mean
loss through derive's value-and-gradient computation; DDP's own all-reduce averages the
gradients) and one SGD step.  With equal halves, the average of the two half-batch mean
gradients is the whole batch's mean gradient, so the parameters must equal, to float64
rounding, those of one single-process step on the whole batch, computed here without DDP.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from derive import load_spec
from derive.targets import codegen

ROOT = Path(__file__).resolve().parents[1]
SPEC = "examples/mlp_softmax.toml"
LR = 0.5
BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path: str):
    from derive.targets.modules import import_file

    return import_file(Path(path), f"_derive_ddp_{Path(path).stem}")


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)


def _worker(rank: int, world: int, port: int, module_path: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mod = _load(module_path)
        model = mod.MODEL(seed=3, dtype=torch.float64)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        x, y = _data()
        half = BATCH // world
        xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.zero_grad()
        loss = ddp(xs, ys)
        loss.backward()  # DDP all-reduces (averages) the gradients during backward
        opt.step()
        torch.save({"state": model.state_dict(), "loss": loss.detach()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_step_on_two_halves_equals_one_step_on_the_batch(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    text = codegen.generate(load_spec(ROOT / SPEC), SPEC, ("torch",))["mlp_softmax_torch.py"]
    path = tmp_path / "mlp_softmax_torch.py"
    path.write_text(text)
    sys.path.insert(0, str(ROOT))  # the spawned processes import derive from here too
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    finally:
        sys.path.remove(str(ROOT))

    mod = _load(str(path))
    model = mod.MODEL(seed=3, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    opt.zero_grad()
    model.loss(x, y).backward()
    opt.step()
    want = model.state_dict()
    start = mod.MODEL(seed=3, dtype=torch.float64).state_dict()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for k, v in want.items():
        assert not torch.allclose(v, start[k]), f"{k} did not move"  # a step that did nothing would pass below
        for r, res in enumerate(results):
            torch.testing.assert_close(res["state"][k], v, rtol=1e-12, atol=1e-14, msg=f"rank {r}: {k}")
    # each rank's loss is its own half's mean; their average is the whole batch's loss
    with torch.no_grad():
        whole = mod.MODEL(seed=3, dtype=torch.float64).loss(x, y)
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, whole, rtol=1e-12, atol=0)
