"""Fixes for two bugs of Triton 3.6's CPU interpreter (TRITON_INTERPRET=1), applied on import of
``sage_fast.triton`` when the interpreter is on, so kernels compute on the CPU what they compute on a GPU.
"""

import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter


def patch_float_conversion():
    """Make TRITON_INTERPRET=1 float casts match the GPU (triton issue 8322).

    Bug: interpreter._convert_float rounds ties away from zero, drops the rounding carry
    into the exponent (126.2 -> fp8e4nv gives 64), turns overflow into 256/NaN instead of
    saturating, and truncates fp32 -> bf16. Fix: cast among fp32/fp16/bf16/fp8e4nv with
    torch (round to nearest even), clamping to [-448, 448] first for fp8e4nv like the GPU's
    cvt.rn.satfinite. This also fixes the fp8 -> fp16 upcast that tl.dot uses.
    """
    original = interpreter._convert_float
    if getattr(original, "patched", False):
        return
    floats = {tl.float32: torch.float32, tl.float16: torch.float16,
              tl.bfloat16: torch.bfloat16, tl.float8e4nv: torch.float8_e4m3fn}

    def convert_float(input, input_dtype, output_dtype, rounding_mode):
        src, dst = floats.get(input_dtype), floats.get(output_dtype)
        if src is None or dst is None or rounding_mode == interpreter._ir.ROUNDING_MODE.RTZ:
            return original(input, input_dtype, output_dtype, rounding_mode)
        in_bits, out_bits = input_dtype.primitive_bitwidth, output_dtype.primitive_bitwidth
        x = torch.from_numpy(np.ascontiguousarray(input).view(f"uint{in_bits}")).view(src)
        if dst == torch.float8_e4m3fn:
            x = x.clamp(-448, 448)
        y = x.to(dst).view(getattr(torch, f"int{out_bits}")).numpy()
        return y.view(f"uint{out_bits}").reshape(np.shape(input))

    convert_float.patched = True
    interpreter._convert_float = convert_float


def patch_scalar_index():
    """Let a loop bound computed from ``tl.program_id`` drive ``range`` under NumPy >= 2.4.

    Bug: the interpreter keeps scalars as 1-element arrays and converts them with
    ``int(array)``, which NumPy 2.4 refuses for arrays with a dimension. Fix: ``.item()``.
    """
    original = interpreter._patch_lang_tensor
    if getattr(original, "patched", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor.patched = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def patch_bf16_dot():
    """Make ``tl.dot`` of bf16 tiles multiply numbers, not bit patterns.

    Bug: the interpreter stores bf16 as uint16 and hands those integers to ``np.matmul``.
    Fix: widen bf16 operands to fp32 (exact) first, as the tensor core's fp32 accumulation does.
    """
    builder = interpreter.InterpreterBuilder
    original = builder.create_dot
    if getattr(original, "patched", False):
        return

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if tl.bfloat16 in (a.dtype, b.dtype):
            widen = lambda t: interpreter.TensorHandle(  # noqa: E731
                interpreter._convert_float(t.data, t.dtype, tl.float32, None).view(np.float32), tl.float32
            )
            a, b = widen(a), widen(b)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.patched = True
    builder.create_dot = create_dot


def apply():
    """Apply every fix (idempotent)."""
    patch_float_conversion()
    patch_scalar_index()
    patch_bf16_dot()
