"""The table `derive verify` prints (and the pytest plugin shows on a failure)."""

from __future__ import annotations


def format_table(report) -> str:
    head = ("target", "against", "quantity", "max rel err", "tolerance", "pass")
    rows = [(c.target, c.against, c.quantity, f"{c.max_rel_err:.2e}", f"{c.tolerance:.0e}", "ok" if c.ok else "FAIL")
            for c in report.checks]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
    out = [f"derive verify {report.network} (seed {report.seed})", line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    for s in report.skipped:
        out.append(f"skipped: {s}")
    for s in report.notes:
        out.append(f"note: {s}")
    if report.divergence:  # derive.verify.divergence: the first named quantity that disagrees with torch
        out.append(report.divergence.line())
    n_fail = sum(not c.ok for c in report.checks)
    out.append("all checks passed" if report.ok else f"{n_fail} check(s) FAILED")
    return "\n".join(out) + "\n"
