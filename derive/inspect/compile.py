"""Compile a generated Triton module's COMPILE_SPECS for a GPU without a GPU, and read the cubin's resources.

triton.compile runs Triton's whole pipeline to a cubin with the ptxas inside the triton wheel;
cuobjdump -res-usage then gives registers, stack (the bytes per thread that spilled) and shared
memory.  This must run without TRITON_INTERPRET (the interpreter replaces @triton.jit), so it runs
in a child process, `python -m derive.inspect.compile MODULE ARCH INDEX...`, that prints one JSON
line per entry.  A compile that runs past its time limit is stopped, reported as such, and the
child is restarted for the entries after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ARCHS = {"sm_90": 90, "sm_80": 80}
# what one block may hold on an SM of each arch (CUDA programming guide, compute capabilities 8.0 and 9.0):
# 64K 32-bit registers, allocated per warp in units of 256; opt-in shared memory per block
REGISTER_FILE = 65536
REGISTER_UNIT = 256
SHARED_PER_BLOCK = {"sm_90": 227 * 1024, "sm_80": 163 * 1024}
_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, said out loud (silences a warning)
    env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="derive-inspect-cache-")  # time real compiles, not hits
    env["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v: the spill stores, told apart from a plain stack frame
    return env


def _entry_key(source: str, index: int, arch: str) -> str:
    import triton

    return hashlib.sha256(f"{triton.__version__}\0{arch}\0{index}\0{source}".encode()).hexdigest()


def compile_module(source: str, arch: str = "sm_90", timeout: float = 120.0, cache_dir: Path | None = None,
                   indices: list[int] | None = None) -> list[dict]:
    """One result per COMPILE_SPECS entry of the module text ``source`` (in order):
    {"index", "kernel", "constexprs", "num_warps", "num_stages", "ok", "error", "registers", "spill_bytes",
    "shared_bytes", "compile_s"}.  With ``cache_dir``, results are kept per (module text, entry, arch, triton)."""
    with tempfile.TemporaryDirectory(prefix="derive-inspect-") as tmp:
        path = Path(tmp) / "derive_inspect_module.py"
        path.write_text(source, encoding="utf-8")
        count = _count(source)
        todo = list(range(count)) if indices is None else list(indices)
        results: dict[int, dict] = {}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for i in list(todo):
                hit = cache_dir / f"{_entry_key(source, i, arch)}.json"
                if hit.exists():
                    results[i] = json.loads(hit.read_text())
                    todo.remove(i)
        while todo:
            done = _run_child(path, arch, todo, timeout)
            for r in done:
                results[r["index"]] = r
                if cache_dir is not None and r["ok"] is not None:
                    (cache_dir / f"{_entry_key(source, r['index'], arch)}.json").write_text(json.dumps(r))
            todo = [i for i in todo if i not in results]
        return [results[i] for i in sorted(results)]


# the fused kernel's training launch (step, FlatState): loss and gradients, no ŷ
TRAINING = {"WITH_OUT": False, "WITH_LOSS": True, "WITH_GRAD": True}


# CPython 3.11's parser keeps its AST recursion depth in shared state: two threads parsing at once can fail
# with "SystemError: AST constructor recursion depth mismatch" (tests/test_compile.py compiles two modules on
# two threads; it failed so twice in one afternoon)
_PARSING = threading.Lock()


def _entries(source: str) -> list:
    """COMPILE_SPECS's entries as AST dicts, read from the module text without importing it (it imports torch)."""
    import ast

    with _PARSING:
        tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILE_SPECS" for t in node.targets):
            if isinstance(node.value, ast.List):
                return node.value.elts
    raise ValueError("the module has no COMPILE_SPECS list")


def _count(source: str) -> int:
    return len(_entries(source))


def training_indices(source: str) -> list[int]:
    """The COMPILE_SPECS entries of the fused kernel's training launch (TRAINING's flags), and of the split
    plan's ∂W kernel, the training step's other launch before the update."""
    out = []
    for i, e in enumerate(_entries(source)):
        kernel = next(v for k, v in zip(e.keys, e.values) if k.value == "kernel")
        if getattr(kernel, "value", "").endswith("_dw_kernel"):
            out.append(i)
            continue
        cx = next(v for k, v in zip(e.keys, e.values) if k.value == "constexprs")
        flags = {k.value: getattr(v, "value", None) for k, v in zip(cx.keys, cx.values)}
        if all(flags.get(k) == v for k, v in TRAINING.items()):
            out.append(i)
    return out


def _run_child(path: Path, arch: str, todo: list[int], timeout: float) -> list[dict]:
    """Run the child on ``todo``; on a stall, report the entry it was compiling as timed out."""
    cmd = [sys.executable, "-m", "derive.inspect.compile", str(path), arch, *map(str, todo)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    out: list[dict] = []
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout + 60  # the first entry also pays for importing torch and triton
    try:
        while len(out) < len(todo):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                proc.kill()
                i = todo[len(out)]
                out.append(_failed(i, None, f"no cubin after {timeout:.0f} s", compile_s=timeout))
                break
            line = proc.stdout.readline()
            if not line:  # the child died: report the entry it was on and go on after it
                proc.wait()
                err = (proc.stderr.read().strip().splitlines() or ["the compiler process exited"])[-1]
                out.append(_failed(todo[len(out)], False, err))
                break
            if not line.startswith('{"index"'):  # anything else a library printed is not a result
                continue
            out.append(json.loads(line))
            deadline = time.monotonic() + timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return out


def _failed(index: int, ok, error: str, compile_s: float | None = None) -> dict:
    return {"index": index, "kernel": None, "constexprs": {}, "num_warps": None, "num_stages": None, "ok": ok,
            "error": error, "registers": None, "spill_bytes": None, "stack_bytes": None, "shared_bytes": None, "compile_s": compile_s}


def _resources(cubin: bytes, kernel: str) -> tuple[int, int, int, int]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([str(tool), "-res-usage", fh.name], capture_output=True, text=True, check=True).stdout
    after = text.split(f"Function {kernel}:", 1)[-1]
    m = _RES.search(after)
    if not m:
        raise RuntimeError(f"cuobjdump printed no resource line for {kernel}")
    reg, stack, shared, local = map(int, m.groups())
    return reg, stack, local, shared


def launch_error(arch: str, registers: int, num_warps: int, shared_bytes: int) -> str | None:
    """Why a compiled kernel could not launch (None: it can).  ptxas accepts up to 255 registers a thread
    at any block size, and Triton compiles any shared-memory footprint: both fail only at launch, on a GPU,
    so the static check must say so (the 64x4 net at 16 warps compiled to 222 registers "without spills": it cannot run)."""
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    if per_warp * num_warps > REGISTER_FILE:
        return (f"cannot launch: {registers} registers x {32 * num_warps} threads need {per_warp * num_warps:,} "
                f"registers a block, the SM has {REGISTER_FILE:,}")
    if shared_bytes > SHARED_PER_BLOCK[arch]:
        return f"cannot launch: {shared_bytes:,} B of shared memory a block, {arch} allows {SHARED_PER_BLOCK[arch]:,}"
    return None


def _child(path: str, arch: str, indices: list[int]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive_inspect_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    specs = module.COMPILE_SPECS
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from derive.inspect.warmup import warm_up

    target = GPUTarget("cuda", ARCHS[arch], 32)
    warm_up(target)
    for i in indices:
        s = specs[i]
        row = {"index": i, "kernel": s["kernel"], "constexprs": s["constexprs"], "num_warps": s["num_warps"],
               "num_stages": s["num_stages"]}
        t0 = time.perf_counter()
        try:
            src = ASTSource(fn=getattr(module, s["kernel"]), signature=s["signature"], constexprs=s["constexprs"])
            log = io.StringIO()
            with contextlib.redirect_stdout(log):  # Triton prints the ptxas -v log; stdout is our JSON lines
                compiled = triton.compile(src, target=target,
                                          options={"num_warps": s["num_warps"], "num_stages": s["num_stages"],
                                                   **({"maxnreg": s["maxnreg"]} if s.get("maxnreg") else {})})
            seconds = time.perf_counter() - t0
            reg, stack, local, static_shared = _resources(compiled.asm["cubin"], s["kernel"])
            m = _SPILL.search(log.getvalue())
            spill = int(m.group(2)) if m else stack + local  # no log: count the whole stack as spilled
            shared = max(static_shared, int(compiled.metadata.shared))
            error = launch_error(arch, reg, s["num_warps"], shared)
            row.update(ok=error is None, error=error, registers=reg, spill_bytes=spill, stack_bytes=stack,
                       shared_bytes=shared, compile_s=round(seconds, 2))
        except Exception as err:  # a compiler rejection is a result to report, not a crash
            msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
            row.update(ok=False, error=f"{type(err).__name__}: {msg}"[:300], registers=None, spill_bytes=None, stack_bytes=None,
                       shared_bytes=None, compile_s=round(time.perf_counter() - t0, 2))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]])
