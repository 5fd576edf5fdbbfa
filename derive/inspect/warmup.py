"""A one-line kernel that the compile child compiles before the entries it times: the first
triton.compile in a process also pays for loading the compiler (LLVM, the NVIDIA backend, the first
ptxas run), seconds on a cold machine, which is no kernel's own compile time."""

import contextlib
import io

import triton
import triton.language as tl


@triton.jit
def warmup_kernel(x_ptr):
    tl.store(x_ptr, tl.load(x_ptr) + 1.0)


def warm_up(target) -> None:
    src = triton.compiler.ASTSource(fn=warmup_kernel, signature={"x_ptr": "*fp32"}, constexprs={})
    with contextlib.redirect_stdout(io.StringIO()):  # its ptxas log: stdout carries the child's JSON lines
        triton.compile(src, target=target, options={"num_warps": 1})
