"""Size limits (checked when a Network is built), their overrides, and the memory budget.

Nothing here allocates more than a few MiB: the budget is refused with tiny budgets passed on
the command line, and a MemoryError is simulated.
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from derive import limits
from derive.cli import main
from derive.errors import SpecError
from derive.limits import Limits
from derive.network import Conv2d, Flatten, Linear, Loss, Network, Port
from derive.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
IRIS_CSV = str(ROOT / "examples" / "data" / "iris.csv")


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("derive: error: ")
    return lines[0]


def mlp(widths, **kw) -> Network:
    return Network("mlp", layers=[Linear(out=w, activation="relu") for w in widths[1:-1]] + [Linear(out=widths[-1])],
                   input=Port("x", (widths[0],)), loss=Loss("cross_entropy"), **kw)


def cifar_convnet(**kw) -> Network:
    return Network("cifar", layers=[Conv2d(64, 3, padding=1, activation="relu"),
                                    Conv2d(64, 3, padding=1, activation="relu"),
                                    Flatten(), Linear(out=128, activation="relu"), Linear(out=10)],
                   input=Port("x", (3, 32, 32)), loss=Loss("cross_entropy"), **kw)


def spec_dict(out: int, in_n: int = 4, table: dict | None = None) -> dict:
    d = {"name": "big", "input": {"shape": [in_n]}, "target": {"shape": [1]},
         "layers": [{"type": "linear", "out": out}, {"type": "linear", "out": 1}]}
    if table is not None:
        d["limits"] = table
    return d


def write_spec(path: Path, d: dict) -> str:
    lines = [f'name = "{d["name"]}"', "[input]", f"shape = {d['input']['shape']}", "[target]",
             f"shape = {d['target']['shape']}"]
    for layer in d["layers"]:
        lines += ["[[layers]]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in layer.items()]
    if "limits" in d:
        lines += ["[limits]"] + [f"{k} = {v}" for k, v in d["limits"].items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- the defaults


@pytest.mark.parametrize("spec", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_within_the_default_limits(spec):
    load_spec(spec)


def test_mnist_and_cifar_sized_networks_are_admitted():
    net = mlp([784, 1024, 1024, 10])
    assert limits.param_elements(net) == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    conv = cifar_convnet()
    assert limits.param_elements(conv) == (64 * 27 + 64) + (64 * 576 + 64) + (128 * 65536 + 128) + (10 * 128 + 10)


def test_a_hundred_million_wide_layer_is_refused():
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(100_000_000), "huge.toml")
    msg = str(err.value)
    assert msg.startswith("huge.toml: layers[0].out: ")
    assert "100,000,000" in msg and "max_elements = 8,388,608" in msg and "--max-elements" in msg


def test_a_3x2000x2000_input_is_refused():
    with pytest.raises(SpecError) as err:
        Network("big", layers=[Conv2d(2, 3), Flatten(), Linear(out=2)], input=Port("x", (3, 2000, 2000)),
                loss=Loss("cross_entropy"))
    assert str(err.value).startswith("<python>: input.shape: the input [3, 2000, 2000] has 12,000,000 elements")


@pytest.mark.parametrize("command", ["explain", "generate", "verify", "train"])
def test_every_command_refuses_before_writing(command, tmp_path, capsys):
    spec = write_spec(tmp_path / "huge.toml", spec_dict(100_000_000))
    out = tmp_path / "out"
    args = {"explain": [], "generate": ["-o", str(out)], "verify": [],
            "train": ["--data", IRIS_CSV, "--checkpoint", str(out / "c.npz")]}[command]
    assert main([command, spec, *args]) == 2
    assert "layers[0].out" in one_error(capsys)
    assert not out.exists()


# --------------------------------------------------------------------------- each limit and its override


def test_max_elements_table_and_flag(tmp_path, capsys):
    # 9,000,000 elements in one weight, each activation small: only max_elements refuses it
    d = spec_dict(3000, in_n=3000)
    spec = write_spec(tmp_path / "w.toml", d)
    assert main(["explain", spec, "--format", "json"]) == 2
    msg = one_error(capsys)
    assert "layers[0].out: parameter W1 [3000, 3000] has 9,000,000 elements" in msg
    assert main(["explain", spec, "--format", "json", "--max-elements", "9000000"]) == 0
    capsys.readouterr()
    raised = write_spec(tmp_path / "w2.toml", spec_dict(3000, in_n=3000, table={"max_elements": 9_000_000}))
    assert load_spec(raised).limits == Limits(max_elements=9_000_000)
    lowered = spec_dict(8, table={"max_elements": 31})  # W1 is 8×4 = 32
    with pytest.raises(SpecError, match=r"layers\[0\]\.out: parameter W1 \[8, 4\] has 32 elements"):
        parse_spec(lowered)


def test_activation_elements_are_limited_per_sample():
    net_kw = dict(layers=[Conv2d(4, 1), Flatten(), Linear(out=1)], input=Port("x", (1, 10, 10)))
    Network("c", **net_kw, limits=Limits(max_elements=400))  # the conv output 4×10×10 = 400
    with pytest.raises(SpecError, match=r"layers\[0\]\.filters: layer 1's output \[4, 10, 10\] \(per sample\) has 400"):
        Network("c", **net_kw, limits=Limits(max_elements=399))


def test_max_params_table_and_flag(tmp_path, capsys):
    # five 2000×2000 layers: each tensor is 4,000,000 elements (allowed), 20,010,000 in all (not)
    d = {"name": "deep", "input": {"shape": [2000]}, "target": {"shape": [2000]},
         "layers": [{"type": "linear", "out": 2000} for _ in range(5)]}
    spec = write_spec(tmp_path / "deep.toml", d)
    assert main(["explain", spec, "--param", "W1"]) == 2
    msg = one_error(capsys)
    assert "layers[4].out: the parameters up to W5 total 20,008,000" in msg and "--max-params" in msg
    with limits.overrides(max_params=20_010_000):
        net = load_spec(spec)
    assert limits.param_elements(net) == 5 * (2000 * 2000 + 2000)
    d["limits"] = {"max_params": 20_010_000}
    load_spec(write_spec(tmp_path / "deep2.toml", d))
    with pytest.raises(SpecError, match=r"max_params = 20,009,999"):
        Network("deep", layers=[Linear(out=2000) for _ in range(5)], input=Port("x", (2000,)),
                target=Port("y", (2000,)), limits=Limits(max_params=20_009_999))


def test_max_tile_counts_padded_widths(tmp_path, capsys):
    # 1025×1025: 1,050,625 elements, but its Triton tile is 2048×2048 = 4,194,304
    d = spec_dict(1025, in_n=1025, table={"max_tile": 4_194_303})
    with pytest.raises(SpecError) as err:
        parse_spec(d, "t.toml")
    assert "t.toml: layers[0].out: parameter W1's Triton tile (1025×1025 padded to 2048×2048) has 4,194,304" in str(err.value)
    d["limits"] = {"max_tile": 4_194_304}
    parse_spec(d)
    spec = write_spec(tmp_path / "t.toml", spec_dict(1025, in_n=1025, table={"max_tile": 1000}))
    assert main(["explain", spec, "--format", "json"]) == 2
    assert "input.shape: the input's Triton tile (1,025 padded to 2,048)" in one_error(capsys)
    assert main(["explain", spec, "--format", "json", "--max-tile", "4194304"]) == 0


def test_activation_tiles_are_limited():
    with pytest.raises(SpecError, match=r"input\.shape: the input's Triton tile \(5 padded to 8\)"):
        Network("t", layers=[Linear(out=1)], input=Port("x", (5,)), limits=Limits(max_tile=7))
    with pytest.raises(SpecError, match=r"layers\[0\]\.out: layer 1's Triton tile \(3 padded to 4\)"):
        Network("t", layers=[Linear(out=3), Linear(out=1)], input=Port("x", (2,)), limits=Limits(max_tile=3))


def test_the_command_line_wins_over_the_table(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", spec_dict(8, table={"max_params": 10}))
    assert main(["explain", spec]) == 2
    assert "max_params = 10;" in one_error(capsys)
    assert main(["explain", spec, "--max-params", "100"]) == 0


@pytest.mark.parametrize("table, says", [
    ({"max_params": 0}, "limits.max_params: expected a positive integer, got 0"),
    ({"max_params": True}, "limits.max_params: expected a positive integer, got true"),
    ({"max_elements": "big"}, "limits.max_elements: expected a positive integer, got 'big'"),
    ({"max_memory": 5}, "limits.max_memory: unknown key 'max_memory'; expected one of max_elements, max_params, max_tile"),
])
def test_bad_limits_table(table, says):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(2, table=table), "s.toml")
    assert str(err.value) == f"s.toml: {says}"


@pytest.mark.parametrize("flag", ["--max-params", "--max-elements", "--max-tile"])
def test_bad_limit_flags(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", flag, "0"])
    assert exc.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_overrides_are_scoped():
    with limits.overrides(max_params=3):
        with pytest.raises(SpecError):
            mlp([4, 2])
    mlp([4, 2])  # the default again


# --------------------------------------------------------------------------- the memory budget


def test_default_budget_is_a_fraction_of_physical_memory():
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert limits.default_budget() == int(phys * limits.BUDGET_FRACTION)


@pytest.mark.parametrize("text, value", [("4096", 4096), ("512M", 512 * 2**20), ("2G", 2 * 2**30),
                                         ("1.5GiB", 3 * 2**29), ("64k", 65536), ("1t", 2**40)])
def test_parse_bytes(text, value):
    assert limits.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "0", "-1G", "2X", "1e9", "lots"])
def test_bad_memory_budget_flag(text, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", f"--memory-budget={text}"])
    assert exc.value.code == 2
    assert "expected a size such as 4G" in capsys.readouterr().err


def test_verify_refuses_above_the_budget_before_allocating(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    called = []
    monkeypatch.setattr("derive.verify.checks.verify", lambda *a, **k: called.append(1))
    conv = str(ROOT / "examples" / "lecture_convnet.toml")
    net = load_spec(conv)
    estimate = limits.estimate_bytes(net, 37, "verify")
    assert main(["verify", conv, "--memory-budget", str(estimate - 1)]) == 2
    msg = one_error(capsys)
    assert f"would allocate about {limits.human(estimate)}" in msg
    assert f"over the memory budget of {limits.human(estimate - 1)}" in msg and "--memory-budget" in msg
    assert called == [] and list(tmp_path.iterdir()) == []


def test_train_refuses_above_the_budget(tmp_path, capsys):
    iris = ROOT / "examples" / "iris_mlp.toml"
    net = load_spec(iris)
    need = limits.estimate_bytes(net, 150, "train", data_rows=150)  # --batch: the whole data set
    csv_need = limits.csv_bytes(IRIS_CSV)
    ckpt = tmp_path / "c.npz"
    common = ["train", str(iris), "--data", IRIS_CSV, "--checkpoint", str(ckpt)]
    assert main([*common, "--memory-budget", str(csv_need - 1)]) == 2  # refused before reading the file
    assert f"derive train --data {IRIS_CSV}: would allocate about {limits.human(csv_need)}" in one_error(capsys)
    assert csv_need < need - 1  # so that a budget between the two passes the first check, not the second
    assert main([*common, "--memory-budget", str(need - 1)]) == 2
    assert "on 150 samples: would allocate about" in one_error(capsys)
    assert not ckpt.exists()


def test_the_estimate_bounds_what_numpy_allocates():
    """tracemalloc sees every NumPy buffer: the verify estimate must exceed the peak of verify's NumPy
    checks (forward, loss, gradients, finite differences, float32) at its largest batch."""
    from derive.targets.modules import generated_modules
    from derive.verify import checks

    for name in ("lecture_convnet", "locally_connected", "mlp_softmax"):
        net = load_spec(ROOT / "examples" / f"{name}.toml")
        with generated_modules(net, name, ("numpy",)) as mods:
            rng = np.random.default_rng(0)
            params = checks.random_params(mods["numpy"], rng)
            x, y = checks.sample(net, rng, max(checks.BATCH_SIZES))
            tracemalloc.start()
            try:
                checks._numpy_checks(checks._Collector(), net, mods["numpy"], params, x, y, rng, None)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert 0 < peak < limits.estimate_bytes(net, max(checks.BATCH_SIZES), "verify"), name


# --------------------------------------------------------------------------- MemoryError, temp dirs


@pytest.mark.parametrize("command, patch", [("verify", "derive.verify.checks.verify"), ("train", "derive.train.loop.train")])
def test_a_memory_error_is_one_line(command, patch, monkeypatch, capsys):
    def boom(*a, **k):
        raise MemoryError("Unable to allocate 112. GiB for an array with shape (100000000, 150)")

    monkeypatch.setattr(patch, boom)
    args = [command, str(ROOT / "examples" / "iris_mlp.toml")] + (["--data", IRIS_CSV] if command == "train" else [])
    assert main(args) == 2
    msg = one_error(capsys)
    assert msg.startswith("derive: error: out of memory (Unable to allocate 112. GiB")


def test_temp_dir_is_removed_when_memory_runs_out():
    from derive.targets.modules import generated_modules

    net = load_spec(ROOT / "examples" / "lecture.toml")
    with pytest.raises(MemoryError):
        with generated_modules(net, "lecture", ("numpy",)) as mods:
            tmp = Path(mods["numpy"].__file__).parent
            assert tmp.is_dir()
            raise MemoryError
    assert not tmp.exists()
