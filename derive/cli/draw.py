"""`derive draw`: the computation graph of the derivation as SVG, PNG or PDF (logic in derive/draw/)."""

from __future__ import annotations

from pathlib import Path

from derive.errors import DeriveError

DRAW_EXAMPLES = """examples:
  derive draw examples/lecture.toml -o lecture.svg
  derive draw examples/lecture.toml -o lecture.png --at x=2 y=1.9 --seed 0   every node with its number
  derive draw examples/lecture_convnet.toml -o convnet.pdf
  derive draw examples/residual_mlp.toml -o residual.svg   a graph: ∂L/∂f1 as the sum of its two paths

Needs Graphviz's dot (scripts/install-graphviz, or apt-get install graphviz)."""


def cmd_draw(args) -> int:
    from derive.cli.options import _network
    from derive.derivation import derive
    from derive.draw import dot, graph
    from derive.fsutil import write_atomic

    out = Path(args.output)
    fmt = out.suffix.lower().lstrip(".")
    if out.is_dir():
        raise DeriveError(f"{args.output}: -o: is a directory; expected a file name")
    if fmt not in dot.FORMATS:
        raise DeriveError(f"{args.output}: -o: expected a file ending in .svg, .png or .pdf, got {out.suffix or 'no suffix'!r}")
    dot.require_dot()
    net = _network(args.spec)
    der = derive(net)
    values = None
    if args.at is not None:
        from derive.evaluate import at_sample

        values = at_sample(der, args.at, args.spec or "<lecture>", args.params, args.seed)
    elif args.params is not None or args.seed is not None:
        raise DeriveError(f"{args.spec or '<lecture>'}: --params and --seed go with --at NAME=VALUE (e.g. --at x=2 y=1.9)")
    picture = dot.render(dot.source(graph.build(der, values)), fmt)
    try:
        write_atomic(out, lambda fh: fh.write(picture))
    except OSError as err:
        raise DeriveError(f"{args.output}: cannot write: {err.strerror or err}") from None
    return 0


def add_commands(sub) -> None:
    from derive.cli.options import HelpFormatter, add_limit_options

    dr = sub.add_parser("draw", help="draw the computation graph: forward quantities, local partials, the δ's",
                        description="Draw the derivation as a graph with Graphviz: each named quantity and "
                                    "parameter, each forward edge with its local partial, each ∂L/∂(·) and δ "
                                    "underneath, re-used δ's marked.  With --at, every node shows its number.",
                        epilog=DRAW_EXAMPLES, formatter_class=HelpFormatter)
    dr.add_argument("spec", nargs="?", help="network spec (TOML); default: the lecture's four-parameter network")
    dr.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="the picture: FILE.svg, FILE.png or FILE.pdf (required)")
    g = dr.add_argument_group("numbers at one sample (as derive explain --at)")
    g.add_argument("--at", nargs="+", metavar="NAME=VALUE",
                   help="evaluate every quantity at this sample, e.g. x=2 y=1.9 (default: no numbers)")
    g.add_argument("--params", metavar="FILE", help="parameters from a JSON file or a .npz checkpoint (default: drawn with --seed)")
    g.add_argument("--seed", type=int, help="draw the parameters not given otherwise with this seed (default 0)")
    add_limit_options(dr)
    dr.set_defaults(func=cmd_draw)
