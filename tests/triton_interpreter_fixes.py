import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter


def patch_fp8_conversion():
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
