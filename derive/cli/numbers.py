"""`derive explain --at`: the derivation with numbers beside the symbols (logic in derive/evaluate.py)."""

from __future__ import annotations

import json


def add_explain_options(ex) -> None:
    g = ex.add_argument_group("numbers at one sample (docs/teaching.md)")
    g.add_argument("--at", nargs="+", metavar="NAME=VALUE",
                   help="evaluate every quantity at this sample: the input and target, e.g. x=2 y=1.9 or "
                        "x=[1,2,3]; parameters may be given too (w1=0.5); values are JSON numbers or lists (default: no numbers)")
    g.add_argument("--params", metavar="FILE",
                   help="parameters from a JSON file ({name: value}, or derive train --format json's output) "
                        "or a derive train --checkpoint .npz (default: drawn with --seed)")
    g.add_argument("--seed", type=int, help="draw the parameters not given otherwise with this seed (default 0)")
    g.add_argument("--full", action="store_true",
                   help="print conv volumes and arrays over 128 elements in full (default: their shape and norm)")


def values_at(der, args):
    """Every quantity's number at the sample of --at (with --params / --seed): evaluate.Values."""
    from derive import evaluate as ev

    return ev.at_sample(der, args.at, args.spec or "<lecture>", args.params, args.seed)


def explain_at(der, args) -> str:
    from derive import evaluate as ev

    values = values_at(der, args)
    if args.format == "text":
        return ev.to_text(der, values, full=args.full, param=args.param)
    if args.format == "json":
        from derive.explain.json_format import to_json_dict

        doc = to_json_dict(der, param=args.param, expand=args.expand)
        return json.dumps(ev.annotate(doc, der, values), indent=2) + "\n"
    from derive.explain import at_sample

    if args.format == "markdown":
        return at_sample.to_markdown(der, values, full=args.full, param=args.param)
    return at_sample.to_latex(der, values, full=args.full, param=args.param, fragment=args.fragment)  # latex
