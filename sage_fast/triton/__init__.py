"""The Triton ladder: from a fused fp16 FlashAttention kernel to SageAttention2's INT8/FP8 kernel.

``RUNGS`` lists the rungs in order; each names the ``sage_ref`` variant it must equal,
and the tests iterate over it. Whole calls at head_dim 128, N = 8k, B·N = 16k, H = 32 (NVIDIA H200, 2026-11-27,
docs/results/bench-h200-2026-11-27.json; SDPA-cuDNN 565 TOPS, sageattention 1.0.6 410):

| rung | TOPS | what it adds |
|---|---|---|
| 1 flash fp16 | 415 | tiles, online softmax in base 2 (FlashAttention) |
| 2 int8 Q·Kᵀ | 273 | INT8 Q·Kᵀ; quantization in PyTorch on the host, most of the call |
| 3 fused quantization | 547 | smoothing + quantization in Triton launches (``pv="fp16"`` off sm90) |
| 4 fp8 P·V | 664 | FP8 e4m3 P·V, two-level fp32 accumulation (SageAttention2), P's keys in operand order |
| 5 TMA | 704 | K̂/V̂ᵀ through tensor descriptors: 3 programs per SM (``pv="fp8"``) |
| 6 Gluon, FA3 layout | 666 | producer warp + two consumer warpgroups, softmax overlapping P·V (Gluon, sm90) |
| 7 Gluon, fp16 P·V | 632 | rung 6's schedule for rung 3's arithmetic (``pv="fp16"`` on sm90, head_dim 65-128) |

Single numbers carry ±5-8 % (``sageattn``, same run: fp8 751 on rung 5's kernel, fp16 618). Rung 5 leads rung 6
(N = 32k: 809 against 752) since P reaches its fp8 operand without shuffles (rung 6 keeps P̂ in shared memory, so the
renaming does not help it), so ``sageattn`` runs rung 5 for fp8; rung 7 beats rung 3 at head_dim 128 (+16 % at 8k,
+21 % at 32k) and loses at head_dim 64, hence its place (docs/notes.md).
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable

from triton import knobs

import sage_ref

if knobs.runtime.interpret:
    from . import interpreter_fixes

    interpreter_fixes.apply()

from . import rung1_flash, rung2_int8_qk, rung3_fused_quant, rung4_fp8_pv, rung5_tma  # noqa: E402

# Rung 6 is written in Gluon: a Triton without ``triton.experimental.gluon``'s Hopper API runs rungs 1-5.
try:
    from . import attn_gluon, rung6_gluon, rung7_gluon_fp16  # noqa: F401 - attn_gluon: fails without Gluon
except ImportError:
    rung6_gluon = rung7_gluon_fp16 = None


@dataclass(frozen=True)
class Rung:
    """One step of the ladder.

    forward(q, k, v, *, is_causal, sm_scale, return_lse[, smooth_k]) runs it on HND tensors;
    reference(...) is the sage_ref emulation it is held to; min_arch is the lowest compute
    capability (major·10 + minor) it runs on; smooths says whether it takes ``smooth_k``;
    interpretable says whether it runs under ``TRITON_INTERPRET=1`` (Gluon kernels do not).
    """

    name: str
    forward: Callable
    reference: Callable
    min_arch: int
    smooths: bool
    interpretable: bool = True


def _sage_ref(pv, module):
    return partial(sage_ref.sage_attention, qk_granularity="block", pv=pv, block_m=module.BLOCK_M, block_n=module.BLOCK_N)


RUNGS = (
    Rung(
        "1-flash-fp16",
        rung1_flash.forward,
        partial(
            sage_ref.sage_attention, qk_granularity=None, pv="fp16", smooth_k=False,
            block_m=rung1_flash.BLOCK_M, block_n=rung1_flash.BLOCK_N,
        ),  # fmt: skip
        80,
        False,
    ),
    Rung("2-int8-qk", rung2_int8_qk.forward, _sage_ref("fp16", rung2_int8_qk), 80, True),
    Rung("3-fused-quant", rung3_fused_quant.forward, _sage_ref("fp16", rung3_fused_quant), 80, True),
    Rung("4-fp8-pv", rung4_fp8_pv.forward, _sage_ref("fp8", rung4_fp8_pv), 89, True),
    Rung("5-tma", rung5_tma.forward, _sage_ref("fp8", rung5_tma), 89, True),
)
if rung6_gluon is not None:
    RUNGS += (
        Rung("6-gluon", rung6_gluon.forward, _sage_ref("fp8", rung6_gluon), 90, True, interpretable=False),
        Rung("7-gluon-fp16", rung7_gluon_fp16.forward, _sage_ref("fp16", rung7_gluon_fp16), 90, True,
             interpretable=False),
    )  # fmt: skip
