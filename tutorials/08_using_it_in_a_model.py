r"""08 · Using it in a model: swapping attention for `sageattn`

You will learn:

- the two ways in: `sageattn` in code you write, `sage_fast.scaled_dot_product_attention` as a drop-in for
  torch's function in code you don't;
- how to check the swap on a whole model: compare its outputs and greedy decisions with and without it;
- the two conventions to get right: layouts (`HND` / `NHD`) and where a causal mask is aligned;
- how to try it in models you did not write: route torch's SDPA in a `with` block, or register sage with
  Hugging Face transformers;
- what the swap gains on an H200, by sequence length.
"""

# %%
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import sage_fast
import sage_ref

torch.manual_seed(0)
# On a CPU, sageattn runs the sage_ref emulation of its kernels: slow, same arithmetic.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## A small transformer
#
# A pre-norm decoder block, the shape of every modern LLM layer: \(x \leftarrow x + \mathrm{Attn}(\mathrm{LN}(x))\),
# \(x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))\). Attention is a function argument, so the same weights run with
# torch's SDPA or with SageAttention.

# %%
class Block(torch.nn.Module):
    def __init__(self, dim=128, heads=4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, 4 * dim),
            torch.nn.GELU(),
            torch.nn.Linear(4 * dim, dim),
        )

    def forward(self, x, attention):
        qkv = self.qkv(self.ln1(x)).unflatten(-1, (3, self.heads, -1))  # [B,N,3,H,D]
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))  # [B,H,N,D] views
        o = attention(q, k, v, is_causal=True)                    # [B,H,N,D]
        x = x + self.proj(o.transpose(1, 2).flatten(-2))
        return x + self.mlp(self.ln2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=256, dim=128, layers=2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(layers))
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens, attention=F.scaled_dot_product_attention):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, attention)
        return self.head(x)


model = TinyLM().to(DEVICE).eval()
tokens = torch.randint(0, 256, (2, 96), device=DEVICE)

# %% [markdown]
# ## Way 1: the drop-in
#
# `sage_fast.scaled_dot_product_attention` has torch's signature and semantics (top-left causal mask, same
# arguments), so it replaces torch's function wherever a model calls it. What it cannot honour (dropout, 3-d
# inputs) it refuses with an error rather than ignoring. (On this CPU it runs the `sage_ref` emulation of the
# fp16 P·V path; on an sm89+ GPU, the fp8 kernels.)

# %%
with torch.no_grad():
    logits_ref = model(tokens)
    logits_sage = model(tokens, attention=sage_fast.scaled_dot_product_attention)

cos = sage_ref.cosine_similarity(logits_sage, logits_ref)
agree = (logits_sage.argmax(-1) == logits_ref.argmax(-1)).float().mean().item()
print(f"logits: 1 - cosine = {1 - cos:.1e}; greedy next-token agreement {agree:.1%}")
assert cos > 0.999 and agree > 0.95

# %% [markdown]
# ## Way 2: `sageattn` in your own code
#
# `sageattn` has keyword arguments for what torch's function can't express: the layout, the P·V precision,
# smoothing, the log-sum-exp. Here it runs the accurate fp16 P·V path in the same model, on the `HND` views
# `[B, H, N, D]` the block makes:

# %%
def sage(q, k, v, is_causal):
    return sage_fast.sageattn(q, k, v, is_causal=is_causal, pv="fp16")


with torch.no_grad():
    logits_fp16 = model(tokens, attention=sage)
cos = sage_ref.cosine_similarity(logits_fp16, logits_ref)
print(f"pv=fp16: logits 1 - cosine = {1 - cos:.1e}")

# %% [markdown]
# The block transposes its `[B, N, H, D]` projections into `HND` views. A model that keeps `[B, N, H, D]` can
# pass them as they are with `tensor_layout="NHD"`: the same numbers, read in place, no copy:

# %%
block = model.blocks[0]
with torch.no_grad():
    x = block.ln1(model.embed(tokens))
    qkv = block.qkv(x).unflatten(-1, (3, block.heads, -1))  # [B, N, 3, H, D]
    q, k, v = qkv.unbind(dim=2)                             # [B, N, H, D] views
    o_nhd = sage_fast.sageattn(
        q, k, v, tensor_layout="NHD", is_causal=True, pv="fp16"
    )
    q_h, k_h, v_h = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D] views
    o_hnd = sage(q_h, k_h, v_h, is_causal=True)
same = torch.equal(o_nhd, o_hnd.transpose(1, 2))
print("NHD output == HND output, transposed:", same)
assert same

# %% [markdown]
# `sageattn`'s causal mask is aligned *bottom-right*, which is what decoding with a KV cache needs: the last
# query sees every key. With `q_len == kv_len`, as in the model above, the two conventions agree; with a cache
# they differ. Four new queries over an 8-key cache:

# %%
q = torch.randn(1, 2, 4, 32, device=DEVICE)
k_cache, v_cache = (torch.randn(1, 2, 8, 32, device=DEVICE) for _ in range(2))
decode = sage_fast.sageattn(q, k_cache, v_cache, is_causal=True, pv="fp16")
truth = sage_ref.naive_attention(
    q.double(), k_cache.double(), v_cache.double(), is_causal=True
)
cos = sage_ref.cosine_similarity(decode, truth)
print(f"4 queries over an 8-key cache, bottom-right causal: cosine {cos:.6f}")
assert cos > 0.999

# %% [markdown]
# ## Way 3: models you did not write
#
# `sage_fast.integrations.route_sdpa` routes every call of torch's SDPA inside a `with` block through sage and
# counts what ran where. A call sage cannot take (dropout, a gradient, float64) runs torch's own function and is
# counted with its reason, so nothing falls back silently:

# %%
from sage_fast.integrations import route_sdpa
from sage_fast.integrations.variants import resolve

# the variant named (sageattn's own P·V choice here, what the drop-in above ran): "auto", the default, would leave
# these short calls to torch on a GPU, as the next section explains
variant = resolve("auto", DEVICE)
with torch.no_grad(), route_sdpa(variant) as counts:
    logits_routed = model(tokens)
print(counts)
assert torch.equal(logits_routed, logits_sage) and counts.sage_calls == 2

# %% [markdown]
# For Hugging Face transformers, `register` makes sage an `attn_implementation`: the masks, the causal alignment,
# the KV cache and grouped-query attention are handled as in transformers' own SDPA path. Here a small
# Llama-shaped decoder with random weights (4 query heads over 2 KV heads) decodes greedily both ways.
#
# With `variant="auto"` (the default of `register` and `route_sdpa`) each call runs where it is faster, and the
# counts show which ran. A decode step is one query over the whole cache: every cached key serves one query, so
# the step moves the cache and computes little, and 8-bit arithmetic has nothing to speed up, while sage would
# first quantize the whole cache (reading it twice more) at ≈ 0.2-0.5 ms of host time per call. On an H200 a step
# over 4k-32k cached keys took 16-257 µs in torch's SDPA against 265-1337 µs in sageattn. So "auto" leaves calls
# with fewer queries than one query tile (64) to torch. On a GPU it also leaves short calls to torch: below 4k
# keys (8k where P·V runs in fp16) torch's SDPA was as fast or faster in all but one benchmark cell, because
# quantizing K and V and the host time are a large share of a short call (at batch 1, a 1k-token causal prompt:
# 35 µs in torch, 181-192 in sage). This prompt has 64 tokens, so on a GPU "auto" runs it on torch too; on the
# CPU, where the emulation runs for learning, the key rule is off and the prompt runs sage. Pass `variant="fp8"`
# or `"fp16"` to run sage on every call (as the accuracy tests do).
# [Using it in real models](../integrations.md) covers diffusers, the adaptive per-layer plan and the
# end-to-end evaluation command.

# %%
import transformers

from sage_fast.integrations import transformers as sage_hf

config = transformers.LlamaConfig(
    vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)
name = sage_hf.register("sage")  # also for from_pretrained(attn_implementation=...)
llama = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=name)
llama = llama.to(DEVICE).eval()
prompt = tokens[:, :64]
decoded = {}
for name in ("sage", "sdpa"):
    llama.set_attn_implementation(name)
    with torch.no_grad():
        decoded[name] = llama.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
            min_new_tokens=8, do_sample=False, pad_token_id=0,
        )
new_tokens = {name: ids[:, prompt.shape[1]:] for name, ids in decoded.items()}
agree = (new_tokens["sage"] == new_tokens["sdpa"]).float().mean().item()
counts = sage_hf.counts("sage")
print(f"generated tokens equal: {agree:.1%}; {counts}")
# the prompt in both layers (sage on the CPU, torch on a GPU); 7 decode steps (the 8th token comes from the
# prompt's logits) on torch
prompt_variant = resolve("auto", DEVICE, q_len=64, kv_len=64)
assert agree >= 7 / 8 and counts.fallback_calls == 0
expected = {"torch": 2 * 7}
expected[prompt_variant] = expected.get(prompt_variant, 0) + 2
assert dict(counts.variants) == expected

# %% [markdown]
# ## Measured on a GPU
#
# The swap's speed-up over torch's fastest backend (cuDNN) by sequence length, causal, as a decoder's prefill
# runs, read from the committed benchmark:

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
env = bench["environment"]
print(f"{env['card']}, torch {env['torch']}, triton {env['triton']}, {env['date']}:")
print("causal, 32 heads")
rows = [r for r in bench["rows"] if r["causal"]]
ms = {(r["name"], r["n"], r["head_dim"]): r["ms"] for r in rows}
print("      N   hd64 fp8   hd128 fp8   hd128 fp16   (speed-up over SDPA cuDNN)")
for n in (1024, 4096, 8192, 16384, 32768):
    paths = ((64, "fp8"), (128, "fp8"), (128, "fp16"))
    ratios = [ms["sdpa-cudnn", n, d] / ms[f"sageattn-{pv}", n, d] for d, pv in paths]
    print(f"  {n:5d}  " + "  ".join(f"{r:9.2f}×" for r in ratios))

# %% [markdown]
# The fp8 path breaks even at about 4k tokens (head_dim 64 and 128 alike) and gains 27–38% by 32k; below that,
# the quantization launches cost more than 8-bit arithmetic saves, and torch's SDPA is the better choice. The fp16
# path (rung 7 at head_dim 128) draws level with cuDNN at 8k and gains 15% by 32k: it is the accurate path, and
# the one for GPUs without fp8 tensor cores.
