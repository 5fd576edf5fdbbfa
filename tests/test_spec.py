"""The TOML spec loader: the examples load, the Python API agrees, bad specs fail on one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from derive.errors import SpecError
from derive.layers import RULES
from derive.network import Linear, Loss, Network, Port
from derive.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
DOC = ROOT / "docs" / "spec.md"


def _fields(net: Network):
    return (net.name, net.layers, net.input, net.target, net.loss, net.params)


# --------------------------------------------------------------------------- good specs


def test_there_are_examples():
    names = {p.stem for p in EXAMPLES}
    assert {"perceptron", "lecture", "linear_regression", "mlp_softmax", "hinge_classifier"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_is_stable(path):
    first = load_spec(path)
    second = load_spec(str(path))
    assert isinstance(first, Network)
    assert first == second
    assert _fields(first) == _fields(second)
    assert first.name == path.stem


def test_lecture_matches_python_api():
    from_toml = load_spec(ROOT / "examples" / "lecture.toml")
    in_python = Network(
        "lecture",
        layers=[
            Linear(activation="sigmoid"),
            Linear(bias=False, activation="sigmoid"),
            Linear(bias=False, activation="sigmoid"),
        ],
        input=Port("x"),
        target=Port("y"),
        loss=Loss("l2"),
    )
    assert from_toml.layers == in_python.layers
    assert from_toml.input == in_python.input
    assert from_toml.target == in_python.target
    assert from_toml.loss == in_python.loss
    assert from_toml.params == in_python.params
    assert [p.name for p in from_toml.params] == ["w1", "b1", "w2", "w3"]
    assert from_toml == in_python


def test_example_shapes():
    mlp = load_spec(ROOT / "examples" / "mlp_softmax.toml")
    assert [(p.name, p.shape) for p in mlp.params] == [
        ("W1", (16, 4)), ("b1", (16,)), ("W2", (8, 16)), ("b2", (8,)), ("W3", (3, 8)), ("b3", (3,)),
    ]
    assert mlp.input == Port("x", (4,)) and isinstance(mlp.input.shape, tuple)
    assert mlp.loss == Loss("cross_entropy", "mean")
    reg = load_spec(ROOT / "examples" / "linear_regression.toml")
    assert [(p.name, p.role) for p in reg.params] == [("theta1", "weight"), ("theta0", "bias")]
    perceptron = load_spec(ROOT / "examples" / "perceptron.toml")
    assert [p.role for p in perceptron.params] == ["weight"]
    hinge = load_spec(ROOT / "examples" / "hinge_classifier.toml")
    assert hinge.output_shape == (1,) and hinge.loss.type == "hinge"


def test_parse_spec_defaults_and_options():
    net = parse_spec(
        {
            "name": "n",
            "input": {"shape": [2]},
            "layers": [
                {"type": "linear", "out": 3, "activation": "leaky_relu", "slope": 0.2},
                {"type": "linear", "out": 3, "activation": "prelu", "slope_init": 1},
                {"type": "linear", "out": 1, "bias": True},
            ],
            "loss": {"reduction": "sum"},
        }
    )
    assert net.input == Port("x", (2,)) and net.target == Port("y")
    assert net.loss == Loss("l2", "sum")
    assert net.info[0].slope_value == 0.2
    assert net.info[1].slope_param == "alpha2" and net.layers[1].slope_init == 1.0
    assert net.layers[2] == Linear(out=1)  # bias = true means the default name
    assert [p.name for p in net.params] == ["W1", "b1", "W2", "b2", "alpha2", "W3", "b3"]


def _doc_blocks():
    text = DOC.read_text(encoding="utf-8")
    return re.findall(r"(<!-- [^>]*-->\n)?```toml\n(.*?)```", text, flags=re.S)


def test_doc_examples_load(tmp_path):
    blocks = [body for marker, body in _doc_blocks() if not marker]
    assert len(blocks) >= 10
    for i, body in enumerate(blocks):
        path = tmp_path / f"doc{i}.toml"
        path.write_text(body, encoding="utf-8")
        load_spec(path)  # raises SpecError with the block's problem


def test_doc_error_examples_are_real(tmp_path, monkeypatch):
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- error-example: (\S+) -->\n```toml\n(.*?)```\s*```text\n(.*?)\n```", text, flags=re.S)
    assert len(found) >= 2
    monkeypatch.chdir(tmp_path)
    for filename, body, expected in found:
        Path(filename).write_text(body, encoding="utf-8")
        with pytest.raises(SpecError) as info:
            load_spec(filename)
        assert str(info.value) == expected


# --------------------------------------------------------------------------- bad specs

HEAD = 'name = "n"\n'
LAYER = '[[layers]]\ntype = "linear"\n'

BAD = {
    "toml_syntax": (HEAD + '[[layers]]\ntype = linear\n', "line 3, column 8", "invalid TOML"),
    "unknown_layer_type": (HEAD + '[[layers]]\ntype = "conv"\n', "layers[0].type", f"expected one of {', '.join(RULES)}, got 'conv'"),
    "missing_layer_type": (HEAD + "[[layers]]\nout = 3\n", "layers[0].type", "missing required key"),
    "unknown_activation": (
        HEAD + LAYER + LAYER + 'activation = "relux"\n',
        "layers[1].activation",
        "expected one of identity, relu, sigmoid, tanh, leaky_relu, softplus, prelu, got 'relux'",
    ),
    "unknown_loss": (HEAD + LAYER + '[loss]\ntype = "l3"\n', "loss.type", "expected one of l2, l1, hinge"),
    "bad_reduction": (HEAD + LAYER + '[loss]\nreduction = "avg"\n', "loss.reduction", "'avg'"),
    "missing_name": (LAYER, "name", "missing required key"),
    "name_not_string": ("name = 3\n" + LAYER, "name", "expected a string, got 3"),
    "missing_layers": (HEAD, "layers", "missing required key"),
    "empty_layers": (HEAD + "layers = []\n", "layers", "at least one"),
    "layers_not_array": (HEAD + '[layers]\ntype = "linear"\n', "layers", "expected an array of tables"),
    "layer_not_table": (HEAD + "layers = [1]\n", "layers[0]", "expected a table"),
    "out_string": (HEAD + LAYER + 'out = "4"\n', "layers[0].out", "expected a positive integer, got '4'"),
    "out_true": (HEAD + LAYER + "out = true\n", "layers[0].out", "expected a positive integer, got true"),
    "out_zero": (HEAD + LAYER + "out = 0\n", "layers[0].out", "expected a positive integer, got 0"),
    "out_float": (HEAD + LAYER + "out = 4.0\n", "layers[0].out", "expected a positive integer, got 4.0"),
    "target_shape_mismatch": (
        HEAD + "[input]\nshape = [3]\n[target]\nshape = [2]\n" + LAYER + "out = 4\n",
        "target.shape",
        "expected the last layer's shape [4], got [2]",
    ),
    "shape_not_list": (HEAD + "[input]\nshape = 3\n" + LAYER, "input.shape", "expected [] (a scalar) or [n]"),
    "shape_matrix": (HEAD + "[input]\nshape = [2, 3]\n" + LAYER, "input.shape", "got [2, 3]"),
    "shape_zero": (HEAD + "[input]\nshape = [0]\n" + LAYER, "input.shape", "positive integer"),
    "vector_input_without_out": (HEAD + "[input]\nshape = [3]\n" + LAYER, "layers[0].out", "expected 'out'"),
    "vector_layer_then_missing_out": (
        HEAD + LAYER + "out = 4\n" + LAYER,
        "layers[1].out",
        "expected 'out' (this layer's input is a vector of 4)",
    ),
    "weight_named_like_input": (HEAD + LAYER + 'weight = "x"\n', "layers[0].weight", "duplicate name 'x'"),
    "bias_named_like_weight": (
        HEAD + LAYER + 'weight = "p"\nbias = "p"\n', "layers[0].bias", "duplicate name 'p' (also used by layers[0].weight)"
    ),
    "default_name_clash": (HEAD + LAYER + 'weight = "b2"\n' + LAYER, "layers[1].bias", "duplicate name 'b2'"),
    "target_named_like_input": (HEAD + '[target]\nname = "x"\n' + LAYER, "target.name", "duplicate name 'x'"),
    "name_with_space": (HEAD + LAYER + 'weight = "w 1"\n', "layers[0].weight", "plain identifier"),
    "name_leading_digit": (HEAD + LAYER + 'weight = "1w"\n', "layers[0].weight", "plain identifier"),
    "name_with_dash": (HEAD + LAYER + 'bias = "w-1"\n', "layers[0].bias", "plain identifier"),
    "network_name_not_identifier": ('name = "my net"\n' + LAYER, "name", "plain identifier"),
    "keyword_name": (HEAD + LAYER + 'weight = "lambda"\n', "layers[0].weight", "Python keyword"),
    "keyword_input_name": (HEAD + '[input]\nname = "class"\n' + LAYER, "input.name", "Python keyword"),
    "reserved_name": (HEAD + LAYER + 'weight = "grads"\n', "layers[0].weight", "generated code"),
    "derived_name": (HEAD + LAYER + 'weight = "a1"\n', "layers[0].weight", "derivation generates"),
    "weight_not_string": (HEAD + LAYER + "weight = 1\n", "layers[0].weight", "expected a name (string), got 1"),
    "bias_number": (HEAD + LAYER + "bias = 0\n", "layers[0].bias", "expected a name (string) or false, got 0"),
    "unknown_top_key": (HEAD + "[training]\nlr = 0.1\n" + LAYER, "training", "expected one of name, input, target, layers, loss, optimizer"),
    "unknown_optimizer": (HEAD + LAYER + '[optimizer]\ntype = "rmsprop"\n', "optimizer.type", "expected one of sgd, momentum"),
    "optimizer_key_of_other": (HEAD + LAYER + '[optimizer]\ntype = "sgd"\nbeta1 = 0.9\n', "optimizer.beta1", "expected one of type, lr, schedule"),
    "optimizer_negative_lr": (HEAD + LAYER + '[optimizer]\nlr = -1.0\n', "optimizer.lr", "expected a positive number"),
    "optimizer_beta_range": (HEAD + LAYER + '[optimizer]\ntype = "adam"\nbeta2 = 1.5\n', "optimizer.beta2", "expected a number in [0, 1)"),
    "optimizer_schedule": (HEAD + LAYER + '[optimizer]\nschedule = "cosine"\n', "optimizer.schedule", "expected 'constant' or 'inv_sqrt'"),
    "unknown_layer_key": (HEAD + LAYER + "outs = 3\n", "layers[0].outs", "expected one of type, out, weight"),
    "unknown_input_key": (HEAD + "[input]\nsize = 3\n" + LAYER, "input.size", "expected one of name, shape"),
    "unknown_loss_key": (HEAD + LAYER + '[loss]\nkind = "l2"\n', "loss.kind", "expected one of type, reduction"),
    "input_not_table": (HEAD + 'input = "x"\n' + LAYER, "input", "expected a table"),
    "cross_entropy_out_1": (
        HEAD + "[input]\nshape = [2]\n" + LAYER + 'out = 1\n[loss]\ntype = "cross_entropy"\n',
        "layers[0].out",
        "number of classes",
    ),
    "cross_entropy_vector_target": (
        HEAD + "[input]\nshape = [2]\n[target]\nshape = [3]\n" + LAYER + 'out = 3\n[loss]\ntype = "cross_entropy"\n',
        "target.shape",
        "class index",
    ),
    "hinge_out_3": (
        HEAD + "[input]\nshape = [2]\n" + LAYER + 'out = 3\n[loss]\ntype = "hinge"\n',
        "layers[0].out",
        "one output per sample",
    ),
    "bce_out_2": (
        HEAD + LAYER + 'out = 2\n[loss]\ntype = "binary_cross_entropy"\n',
        "layers[0].out",
        "one output per sample",
    ),
    "leaky_slope_string": (
        HEAD + LAYER + 'activation = "leaky_relu"\nslope = "s"\n', "layers[0].slope", "expected a number"
    ),
    "leaky_slope_nan": (HEAD + LAYER + 'activation = "leaky_relu"\nslope = nan\n', "layers[0].slope", "finite"),
    "prelu_slope_number": (HEAD + LAYER + 'activation = "prelu"\nslope = 0.1\n', "layers[0].slope", "a name (string)"),
    "prelu_slope_init_string": (
        HEAD + LAYER + 'activation = "prelu"\nslope_init = "big"\n', "layers[0].slope_init", "expected a number"
    ),
    "slope_without_leaky": (HEAD + LAYER + 'activation = "relu"\nslope = 0.1\n', "layers[0].slope", "belongs to"),
    "slope_init_without_prelu": (
        HEAD + LAYER + 'activation = "leaky_relu"\nslope_init = 0.1\n', "layers[0].slope_init", "belongs to prelu"
    ),
    "activation_not_string": (HEAD + LAYER + "activation = 1\n", "layers[0].activation", "expected a string, got 1"),
}


@pytest.mark.parametrize("text, key_path, expected", list(BAD.values()), ids=list(BAD))
def test_bad_spec(tmp_path, text, key_path, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert err.source == str(path)
    assert err.path == key_path
    assert message.startswith(f"{path}: {key_path}: ")
    assert expected in message
    assert err.__cause__ is None and err.__suppress_context__  # raised `from None`: no chained traceback


def test_toml_syntax_error_at_end_of_document(tmp_path):
    path = tmp_path / "cut.toml"
    path.write_text('name = "n"\nvalue = ', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: line 2, column 9: invalid TOML: Invalid value"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")


@pytest.mark.parametrize("where", ["missing.toml", "."], ids=["missing", "directory"])
def test_unreadable_file(tmp_path, where):
    path = tmp_path / where
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.path == "" and err.source == str(path)
    assert str(err).startswith(f"{path}: cannot read spec file: ")
    assert "\n" not in str(err)


def test_parse_spec_reports_source():
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "n", "layers": [{"type": "linear", "activation": "relux"}]})
    assert str(info.value).startswith("<dict>: layers[0].activation: expected one of identity")
    with pytest.raises(SpecError) as info:
        parse_spec({"layers": [{"type": "linear"}]}, source="cli.toml")
    assert str(info.value) == 'cli.toml: name: missing required key; expected a string such as name = "lecture"'
    with pytest.raises(SpecError) as info:
        parse_spec([1, 2])  # type: ignore[arg-type]
    assert str(info.value).startswith("<dict>: expected a TOML document")


def test_nothing_is_evaluated(tmp_path):
    path = tmp_path / "evil.toml"
    path.write_text(HEAD + LAYER + 'out = "__import__(\'os\').getcwd()"\n', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.path == "layers[0].out"


def test_names_the_generator_never_uses_are_the_users():
    """a0 (layers count from 1), scale (the batch scale is _scale), B and rows (kernel locals start with _)
    are ordinary names; the generated NumPy and Triton modules built with them still match torch.autograd."""
    import numpy as np

    from derive.targets.modules import generated_modules
    from derive.verify import sample
    from helpers import assert_close_to_torch, assert_matches_torch, random_params, triton_inputs, triton_outputs

    net = Network("names", [Linear(out=3, weight="scale", bias="a0", activation="tanh"), Linear(out=2, weight="B", bias="rows")],
                  input=Port("x", (2,)), target=Port("y", (2,)))
    assert [p.name for p in net.params] == ["scale", "a0", "B", "rows"]
    rng = np.random.default_rng(0)
    with generated_modules(net, "<test>") as mods:
        params = random_params(mods["numpy"], rng)
        x, y = sample(net, rng, 4)
        assert_matches_torch(net, mods["numpy"], params, x, y, 1e-10, "names")  # f64: only rounding differs
        tp, tx, ty = triton_inputs(net, params, x, y)
        # float32 over two small layers: 1e-4 of the float64 reference
        assert_close_to_torch(net, triton_outputs(mods["triton"], tp, tx, ty, net=net), tp, tx, ty, 1e-4,
                              "names triton", float32=True)
