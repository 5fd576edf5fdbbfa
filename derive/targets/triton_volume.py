"""Triton generation for conv2d and locally_connected layers: helper kernels, scratch buffers, call strings.

The fused kernel keeps its shape (one program per batch tile; forward, loss, backward and
the gradient reduction in one launch).  A volume is a (BLOCK_B, c·h·w) register tile,
flattened in C order, so flatten is free and activations stay elementwise.  Reading a
window needs addressable memory, so each program copies its rows of a conv layer's input
(when it is an activation) and of δ (when the layer below needs ∂L/∂input) to scratch
buffers in global memory, behind a barrier; the helpers then read windows from there:

  forward       direct convolution, one pass per (c, p, q), padding through masks
  ∂L/∂W, ∂L/∂b  per (c, p, q) a batch sum, atomically added (weight sharing: summed over (i, j) first)
  ∂L/∂input     a gather: each input element collects the windows that cover it, written once
"""

from __future__ import annotations

import math

from derive.ir.nodes import (ConvInputGrad, ConvWeightGrad, KernelIR, LocalInputGrad, LocalWeightGrad, Pad,
                        VolumeLayer)


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pre(v: VolumeLayer) -> str:
    return f"_layer{v.layer}"


def _src_ptr(ir: KernelIR, v: VolumeLayer) -> str:
    return f"{ir.input.name}_ptr" if v.first else f"{v.source}_ptr"


def calls(ir: KernelIR) -> dict:
    """{layer: {"forward" | "weight" | "bias" | "input": call}} and {padded gradient name: input call}."""
    out: dict = {}
    for v in ir.volumes:
        src = _src_ptr(ir, v)
        b_ptr = f"{v.bias}_ptr" if v.bias else f"{v.weight}_ptr"  # no bias: a pointer that is never read
        tile = "0.0" if v.first else v.source
        out[v.layer] = {
            "forward": f"{_pre(v)}_forward({src}, {tile}, {v.weight}_ptr, {b_ptr}, _rows, _row_mask, "
                       f"STORE={not v.first}, BLOCK_B=BLOCK_B)",
            "weight": f"{_pre(v)}_weight_grad({src}, delta{v.layer}, dL_d{v.weight}_ptr, _rows, _row_mask, BLOCK_B=BLOCK_B)",
            "bias": f"{_pre(v)}_bias_grad(delta{v.layer})",
            "input": f"{_pre(v)}_input_grad(delta{v.layer}, delta{v.layer}_ptr, {v.weight}_ptr, _rows, _row_mask, "
                     f"BLOCK_B=BLOCK_B)",
        }
        if v.padding:
            out[f"dL_d{v.source}_pad"] = out[v.layer]["input"]
    return out


def dropped(ir: KernelIR, a) -> bool:
    """Assignments the Triton kernel does without: x_pad (read through masks), ∂L/∂x_pad (the gather
    writes ∂L/∂x directly), weight gradients (the helper adds them atomically; see grad_store)."""
    if not ir.volumes:
        return False
    e = a.expr
    if isinstance(e, (Pad, ConvWeightGrad, LocalWeightGrad)):
        return True
    if isinstance(e, (ConvInputGrad, LocalInputGrad)):
        v = next(v for v in ir.volumes if v.layer == int(e.args[-1]))
        return v.padding > 0
    return False


def params(ir: KernelIR) -> set[str]:
    """Parameters the helpers load themselves (not as whole tiles in the fused kernel)."""
    return {n for v in ir.volumes for n in (v.weight, v.bias) if n}


def needs_input_tile(ir: KernelIR) -> bool:
    return not (ir.volumes and ir.volumes[0].first)


def grad_store(ir: KernelIR, param: str) -> str | None:
    for v in ir.volumes:
        if param == v.weight:
            return calls(ir)[v.layer]["weight"]
    return None


def sizes(ir: KernelIR) -> set[int]:
    """Flat widths the fused kernel needs columns for (a locally connected bias, a volume input)."""
    out = {math.prod(p.shape) for p in ir.params if len(p.shape) >= 3}
    if len(ir.input.shape) == 3:
        out.add(math.prod(ir.input.shape))
    return out


def kernel_args(ir: KernelIR) -> list[dict]:
    out = []
    for v in ir.volumes:
        if not v.first:
            out.append({"name": f"{v.source}_ptr",
                        "comment": f"scratch: {v.source}, (batch, {', '.join(map(str, v.in_shape))}) float32, "
                                   f"the windows of layer {v.layer}", "type": "*fp32"})
        if v.below:
            out.append({"name": f"delta{v.layer}_ptr",
                        "comment": f"scratch: δ{v.layer}, (batch, {', '.join(map(str, v.out_shape))}) float32, "
                                   f"gathered for ∂L/∂{v.source}", "type": "*fp32"})
    return out


def scratch(ir: KernelIR) -> list[dict]:
    """Scratch buffers launch() allocates, in kernel-argument order."""
    x = ir.input.name
    return [{"alloc": f"{x}.new_empty(_batch * {math.prod(_shape(ir, a['name']))}, dtype=torch.float32)"}
            for a in kernel_args(ir)]


def _shape(ir: KernelIR, ptr: str) -> tuple:
    for v in ir.volumes:
        if ptr == f"{v.source}_ptr":
            return v.in_shape
        if ptr == f"delta{v.layer}_ptr":
            return v.out_shape
    raise KeyError(ptr)


def helpers(ir: KernelIR, env) -> list[str]:
    tpl = env.get_template("triton_volume.py.jinja")
    out = []
    for v in ir.volumes:
        c, h, w = v.in_shape
        o, oh, ow = v.out_shape
        kh, kw = v.kernel
        ckk, kk = c * kh * kw, kh * kw
        shared = v.kind == "conv2d"
        f = dict(v.formulas)
        w_shape = (o, c, kh, kw) if shared else (o, oh, ow, c, kh, kw)
        out.append(tpl.render(
            pre=_pre(v), layer=v.layer, source=v.source, weight=v.weight, w_shape=w_shape,
            bias=v.bias is not None, bias_desc=f"{v.bias}, {(o,) if shared else (o, oh, ow)}" if v.bias else "unused (no bias)",
            c=c, h=h, w=w, hw=h * w, o=o, oh=oh, ow=ow, ohw=oh * ow, kh=kh, kw=kw, s=v.stride, pad=v.padding,
            n_in=c * h * w, np_in=_pow2(c * h * w), n_out=o * oh * ow, np_out=_pow2(o * oh * ow), np_o=_pow2(o),
            ckk=ckk, kk=kk, shared=shared, below=v.below,
            w_index=(f"o * {ckk} + c * {kk} + p * {kw} + q" if shared else f"n * {ckk} + c * {kk} + p * {kw} + q"),
            w_index_in=(f"o * {ckk} + c * {kk} + p * {kw} + q" if shared
                        else f"(o * {oh * ow} + i * {ow} + j) * {ckk} + c * {kk} + p * {kw} + q"),
            b_index="o" if shared else "n",
            forward=f["forward"], weight_formula=f["weight"], bias_formula=f.get("bias", ""),
            input_formula=f.get("input", ""),
        ).rstrip("\n"))
    return out


__all__ = ["calls", "dropped", "grad_store", "helpers", "kernel_args", "needs_input_tile", "params", "scratch", "sizes"]
