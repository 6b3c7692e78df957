"""The models the evaluation runs: randomly initialised from transformers configs, nothing downloaded.

=========== ======================================================================================
model/size  shape
=========== ======================================================================================
llama/tiny  2 layers, hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16, vocab 256
llama/large Llama-3-8B's shape: 32 layers, hidden 4096, 32 heads over 8 KV heads, head_dim 128,
            MLP 14336, vocab 128256, rope theta 500000
bert/tiny   2 layers, hidden 64, 4 heads, head_dim 16, vocab 256 (masked-LM head)
bert/large  BERT-large's shape: 24 layers, hidden 1024, 16 heads, head_dim 64, MLP 4096, vocab 30522
=========== ======================================================================================

BERT's position table is sized to the sequence (random weights: any length is as good as 512).
Random weights give near-uniform attention (scores q·k are small), the easy case for quantization:
these numbers test the plumbing and measure speed, they do not predict a trained model's accuracy.
"""

from __future__ import annotations

import torch

from ..integrations.extras import require

KINDS = {"llama": "decoder", "bert": "encoder"}
SHAPES = {
    ("llama", "tiny"): {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2},
    ("llama", "large"): {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                             "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0},
    ("bert", "tiny"): {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4},
    ("bert", "large"): {"vocab_size": 30522, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                            "num_attention_heads": 16},
}  # fmt: skip


def config(model: str, size: str, seq_len: int):
    """The transformers config of ``model`` ("llama", "bert") at ``size`` ("tiny", "large") for ``seq_len`` tokens."""
    if (model, size) not in SHAPES:
        raise ValueError(f"model/size must be one of {sorted(SHAPES)}, got {(model, size)}")
    transformers = require("transformers")
    if model == "llama":
        return transformers.LlamaConfig(max_position_embeddings=max(8192, seq_len), **SHAPES[model, size])
    return transformers.BertConfig(max_position_embeddings=max(512, seq_len), **SHAPES[model, size])


def build(model: str, size: str, *, seq_len: int, device, dtype, seed: int = 0):
    """A randomly initialised ``model`` (causal LM for llama, masked LM for bert) in eval mode on ``device``.

    Parameters are created on ``device`` directly (an 8B model is initialised on the GPU in seconds).
    """
    model_config = config(model, size, seq_len)  # first: it refuses an unknown model/size by name
    transformers = require("transformers")
    auto = transformers.AutoModelForCausalLM if KINDS[model] == "decoder" else transformers.AutoModelForMaskedLM
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            net = auto.from_config(model_config, dtype=dtype, attn_implementation="sdpa")
    return net.eval()


def random_tokens(vocab_size: int, batch: int, seq_len: int, *, seed: int, device) -> torch.Tensor:
    """[batch, seq_len] token ids drawn uniformly with a fixed seed (the "text" of a random-weight model)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=gen).to(device)
