"""SageAttention's quantizers, written the way the kernels compute them.

INT8 (Q and K):  scale = max|x| / 127 over a group of tokens,
code = round(x · (127 / max|x|)), rounded half away from zero (``trunc(x/scale ± 0.5)``, what a GPU's truncating
float->int conversion gives after adding ±0.5). Codes lie in [-127, 127] and
|x - code · scale| <= scale / 2. An all-zero group gets scale 0 and codes 0: no
division by zero. A group whose 127 / max|x| overflows fp32 (max|x| < 3.7e-37) gets codes 0 as well, where it
would otherwise get x · inf.

The *granularity* says which tokens share a scale (per batch and head):

============  =============================================================
``tensor``    one scale for the whole tensor
``token``     one scale per token
``block``     one per tile of ``block_size`` tokens (the kernel's BLOCK_M/BLOCK_N),
              so dequantization is one multiply per tile
``warp``      SageAttention2: one per ``block_size // warps`` tokens, the rows one
              warp of the program owns
``thread``    SageAttention2: inside each warp's rows, the tokens with the same
              index mod 8, which the MMA fragment layout puts in one thread
============  =============================================================

FP8 e4m3 (V, SageAttention2): per channel, scale = max_tokens|v| / 448 (448 is
e4m3's largest finite value), rounded to nearest even by the hardware conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_block, check_choice, check_float_tensor, check_tokens

GRANULARITIES = ("tensor", "token", "block", "warp", "thread")
INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
MMA_ROW_GROUP = 8  # rows of an MMA fragment that land in different threads


def smooth_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract K's mean over tokens: K_s = K - mean_n K, per (batch, head, channel).

    k [B, H, N, D] -> (k_smoothed [B, H, N, D], k_mean [B, H, 1, D]), in fp32 (fp64 for
    fp64 input). softmax(q Kᵀ) is unchanged, because q · mean is the same for every
    key of a row; but the channel bias that K shares across tokens, which would
    dominate its quantization scale, is gone.
    """
    check_tokens("k", check_float_tensor("k", k))
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    # Summed in fp64 and rounded once: the fp32 mean does not depend on the summation order, so a
    # kernel that sums in another order gets the same mean, and the same INT8 codes.
    k_mean = k.to(torch.float64).mean(dim=-2, keepdim=True).to(dtype)
    return k.to(dtype) - k_mean, k_mean


def token_groups(n: int, granularity: str, block_size: int, warps: int = 4, device=None) -> torch.Tensor:
    """Which scale each of ``n`` tokens uses: a LongTensor [n] of group indices."""
    check_choice("granularity", granularity, GRANULARITIES)
    check_block("block_size", block_size)
    check_block("n", n)
    check_block("warps", warps)
    t = torch.arange(n, device=device)
    if granularity == "tensor":
        return torch.zeros_like(t)
    if granularity == "token":
        return t
    if granularity == "block":
        return t // block_size
    # Warps split each tile on their own, so a group never spans two tiles, even when
    # block_size is not a multiple of warps (the remainder rows form one more slice).
    warp_rows = max(block_size // warps, 1)
    tile, row = t // block_size, t % block_size
    warp = tile * -(-block_size // warp_rows) + row // warp_rows
    if granularity == "warp":
        return warp
    return warp * MMA_ROW_GROUP + row % warp_rows % MMA_ROW_GROUP


@dataclass(frozen=True)
class Int8Quantized:
    """INT8 codes with their scales.

    codes [B, H, N, D] int8; scale [B, H, G] fp32 (G groups; [1, 1, 1] for ``tensor``);
    group [N] maps token -> scale index.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    group: torch.Tensor

    def token_scale(self) -> torch.Tensor:
        """The scale of every token: [B, H, N]."""
        return self.scale[..., self.group].expand(*self.codes.shape[:-1])

    def dequantize(self) -> torch.Tensor:
        """codes · scale in fp32: [B, H, N, D]."""
        return self.codes.to(torch.float32) * self.token_scale()[..., None]


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """round(x), halves away from zero: trunc(x ± 0.5), as a kernel does before its float->int cast."""
    return torch.trunc(x + torch.where(x >= 0, 0.5, -0.5))


def divide(a, b) -> torch.Tensor:
    """a / b correctly rounded, as the kernels' ``div_rn``. PyTorch computes ``float / tensor`` (and, on
    CUDA, ``tensor / float``) as a multiplication by a reciprocal, an ulp off; tensor / tensor is exact."""
    like = a if isinstance(a, torch.Tensor) else b
    return torch.as_tensor(a, dtype=like.dtype, device=like.device) / torch.as_tensor(b, dtype=like.dtype, device=like.device)


def reciprocal_scale(amax: torch.Tensor, target_max: float) -> torch.Tensor:
    """target_max / amax, and 0 where that overflows: amax = 0 (an all-zero group) or amax < target_max / FP32_MAX
    (≈ 3.7e-37 for int8, 1.3e-36 for e4m3). Such a group quantizes to codes 0 and dequantizes to 0, within
    1.3e-36 of its values, where its codes would otherwise be x · inf (inf, or NaN for x = 0).

    Kernels divide once per group and multiply every element: an IEEE division per element
    costs about twenty instructions, which made quantization a third of a short call's time.
    """
    inv = divide(target_max, torch.where(amax == 0, 1.0, amax))
    return torch.where((amax == 0) | torch.isinf(inv), 0.0, inv)


def quantize_int8(x: torch.Tensor, granularity: str = "block", block_size: int = 64, warps: int = 4) -> Int8Quantized:
    """Symmetric INT8 quantization of x [B, H, N, D] with one scale per token group.

    scale_g = max_{t in g} |x_t| / 127 (fp32);  code_t = round(x_t · (127 / max_{t in g} |x_t|)).
    A group whose scale is 0, or whose 127 / max|x| overflows fp32, gets codes 0. A NaN in a group makes its
    scale NaN, so NaN survives dequantization.
    """
    x = check_tokens("x", check_float_tensor("x", x)).to(torch.float32)
    b, h, n, _ = x.shape
    group = token_groups(n, granularity, block_size, warps, device=x.device)
    token_amax = x.abs().amax(dim=-1)
    if granularity == "tensor":
        amax = token_amax.amax().reshape(1, 1, 1)
    else:
        n_groups = int(group.max()) + 1
        index = group.expand(b, h, n)
        amax = torch.zeros(b, h, n_groups, dtype=torch.float32, device=x.device)
        amax = amax.scatter_reduce(-1, index, token_amax, "amax")
        # scatter's amax may drop NaN; add 0 · x so a NaN (or inf) token poisons its group.
        amax = amax + torch.zeros_like(amax).scatter_add(-1, index, token_amax * 0)
    inv_scale = reciprocal_scale(amax, INT8_MAX)[..., group].expand(b, h, n)
    codes = round_half_away(x * inv_scale[..., None]).to(torch.int8)
    return Int8Quantized(codes, divide(amax, INT8_MAX), group)


def quantize_per_channel(v: torch.Tensor, target_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v / scale with scale = max_tokens |v| / target_max per (batch, head, channel).

    v [B, H, N, D] -> (v · (target_max / max|v|) in fp32 [B, H, N, D], scale [B, H, 1, D]).
    A zero channel stays 0. NaN in a channel propagates through the scale.
    """
    v = check_tokens("v", check_float_tensor("v", v)).to(torch.float32)
    # + Σ 0·v: NaN for a channel with NaN or inf (the maximum drops NaN), 0 otherwise, even where Σ v would overflow.
    amax = v.abs().amax(dim=-2, keepdim=True) + (v * 0).sum(dim=-2, keepdim=True)
    return v * reciprocal_scale(amax, target_max), divide(amax, target_max)


def quantize_v_fp8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2's V: FP8 e4m3 per channel. v [B, H, N, D] -> (v_fp8, v_scale [B, H, 1, D]).

    v ≈ v_fp8 · v_scale with v_scale = max_tokens |v| / 448 and round-to-nearest-even.
    """
    v_scaled, scale = quantize_per_channel(v, FP8_E4M3_MAX)
    return v_scaled.to(FP8_DTYPE), scale


def quantize_v_int8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The v1 paper's INT8 V, per channel. v [B, H, N, D] -> (codes int8, v_scale [B, H, 1, D])."""
    v_scaled, scale = quantize_per_channel(v, INT8_MAX)
    return round_half_away(v_scaled).to(torch.int8), scale


P_ENCODINGS = ("fp16", "fp8", "int8")


def encode_p(p: torch.Tensor, encoding: str) -> tuple[torch.Tensor, float]:
    """How a kernel stores the probabilities P in [0, 1] before the P·V product.

    Returns (codes, p_scale) with P ≈ codes · p_scale:
    ``fp16`` -> (P in fp16, 1); ``fp8`` -> (e4m3(P · 448), 1/448): scaling into [0, 448]
    uses e4m3's whole range instead of its coarse bottom; ``int8`` -> (round(P · 127), 1/127).
    """
    check_choice("encoding", encoding, P_ENCODINGS)
    if encoding == "fp16":
        return p.to(torch.float16), 1.0
    if encoding == "fp8":
        return (p.to(torch.float32) * FP8_E4M3_MAX).to(FP8_DTYPE), 1.0 / FP8_E4M3_MAX
    return round_half_away(p.to(torch.float32) * INT8_MAX).to(torch.int8), 1.0 / INT8_MAX


def decode_p(codes: torch.Tensor, p_scale: float) -> torch.Tensor:
    """codes · p_scale in fp32, the inverse of [`encode_p`][sage_ref.encode_p]."""
    return codes.to(torch.float32) * p_scale
