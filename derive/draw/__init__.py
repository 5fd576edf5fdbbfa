"""Pictures of the derivation: the computation graph (graph.py: records -> nodes and edges; dot.py: Graphviz)
and the self-contained HTML page of `derive explain --format html` (page.py, KaTeX vendored in katex/)."""
