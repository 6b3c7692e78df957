"""sage in diffusers models: tiny randomly initialised UNet2DConditionModel and FluxTransformer2DModel from configs.

The wrapped processors keep the model's own logic and only route its SDPA calls, so the checks are:
every processor's calls ran sage (counts per variant, per layer with a plan), the output stays within
the agreement bound of tests/tiny_models.py of the unwrapped model's, processors that make no SDPA
call are reported, cross_attention_kwargs still reach the wrapped processor, and ``remove`` restores
the originals.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers", reason="the integrations extra: pip install -e '.[integrations]'")
from diffusers.models import attention_processor
from tiny_models import AGREEMENT

import sage_ref
from sage_fast.integrations import AttentionPlan, calibrate
from sage_fast.integrations import diffusers as sage_diffusers

LAYERS = 8  # self- and cross-attention in 4 transformer blocks (down, mid, two up)


def unet():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
        )  # fmt: skip
    return model.eval()


gen = torch.Generator().manual_seed(0)
LATENTS, TEXT = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 7, 32, generator=gen)


def denoise(model, **kwargs):
    with torch.no_grad():
        return model(LATENTS, torch.tensor([10, 10]), encoder_hidden_states=TEXT, **kwargs).sample


@pytest.mark.parametrize("variant", ["fp16", "fp8"])
def test_unet_runs_every_attention_on_sage(variant):
    model = unet()
    reference = denoise(model)
    counts = sage_diffusers.apply(model, variant=variant)
    out = denoise(model)
    assert sage_ref.cosine_similarity(out, reference) >= AGREEMENT
    assert dict(counts.variants) == {variant: LAYERS} and counts.fallback_calls == 0
    sage_diffusers.remove(model)
    assert {type(p).__name__ for p in model.attn_processors.values()} == {"AttnProcessor2_0"}
    assert torch.equal(denoise(model), reference)


class FlagProcessor(attention_processor.AttnProcessor2_0):
    """AttnProcessor2_0 with one extra cross-attention keyword, recorded when it arrives."""

    def __init__(self):
        self.seen = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, flag=None):
        self.seen.append(flag)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_wrapper_shows_the_processor_signature_so_kwargs_arrive():
    """diffusers passes a processor only the cross_attention_kwargs its signature names."""
    model = unet()
    processor = FlagProcessor()
    model.set_attn_processor(processor)
    counts = sage_diffusers.apply(model, variant="fp16")
    wrapped = next(iter(model.attn_processors.values()))
    assert inspect.signature(wrapped.__call__) == inspect.signature(processor.__call__)
    denoise(model, cross_attention_kwargs={"flag": 7})
    assert processor.seen == [7] * LAYERS and counts.sage_calls == LAYERS


def test_a_wrapped_model_pickles_and_copies():
    """torch.save and copy.deepcopy of a model with sage's processors (their classes are made at run time)."""
    model = unet()
    sage_diffusers.apply(model, variant="fp16")
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(next(iter(clone.attn_processors.values()))).__name__ == "SageAttnProcessor2_0"
        assert torch.equal(denoise(clone), denoise(model))


def test_plan_per_layer_and_calibration():
    model = unet()
    calls = sage_diffusers.capture(model, denoise)
    layers = sorted({c.layer for c in calls})
    assert len(calls) == LAYERS and all(name.endswith(("attn1", "attn2")) for name in layers)
    plan = calibrate(calls, threshold=0.99)
    assert set(plan.layers) == set(layers) and set(plan.layers.values()) <= {"fp8", "fp16", "torch"}
    by_hand = AttentionPlan(layers={layers[0]: "torch", layers[1]: "fp8"}, default="fp16", threshold=0.99)
    counts = sage_diffusers.apply(model, plan=by_hand)
    denoise(model)
    assert dict(counts.variants) == {"torch": 1, "fp8": 1, "fp16": LAYERS - 2}
    assert len(sage_diffusers.capture(model, denoise)) == LAYERS  # capturing again leaves sage's wrappers in place
    denoise(model)
    assert dict(counts.variants) == {"torch": 2, "fp8": 2, "fp16": 2 * (LAYERS - 2)}
    with pytest.raises(ValueError, match="does not have"):
        sage_diffusers.apply(model, plan=AttentionPlan(layers={"nowhere.attn1": "fp8"}, default="fp16", threshold=0.9))


def test_a_processor_without_sdpa_is_reported_as_a_fallback():
    model = unet()
    model.set_attn_processor(attention_processor.AttnProcessor())  # the pre-SDPA processor
    counts = sage_diffusers.apply(model, variant="fp16")
    denoise(model)
    assert counts.sage_calls == 0 and counts.fallbacks == {
        "AttnProcessor made no scaled_dot_product_attention call": LAYERS
    }
    sage_diffusers.apply(model, variant="fp16", strict=True)
    with pytest.raises(ValueError, match=r"\.attn\d: AttnProcessor made no scaled_dot_product_attention call"):
        denoise(model)


def test_flux_processors_through_the_attention_dispatcher():
    """FluxAttnProcessor calls diffusers' dispatch_attention_fn, whose native backend calls torch's SDPA."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                 pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)).eval()  # fmt: skip
    inputs = {"hidden_states": torch.randn(1, 16, 4, generator=gen), "encoder_hidden_states": torch.randn(1, 5, 32, generator=gen),
                  "pooled_projections": torch.randn(1, 32, generator=gen), "timestep": torch.tensor([0.5]),
                  "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(5, 3)}  # fmt: skip
    with torch.no_grad():
        reference = model(**inputs).sample
        counts = sage_diffusers.apply(model, variant="fp8")
        out = model(**inputs).sample
    assert sage_ref.cosine_similarity(out, reference) >= AGREEMENT
    assert dict(counts.variants) == {"fp8": 2}


def test_refusals():
    with pytest.raises(TypeError, match="diffusers model"):
        sage_diffusers.apply(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="variant"):
        sage_diffusers.apply(unet(), variant="int8")
    with pytest.raises(TypeError, match="strict"):
        sage_diffusers.apply(unet(), strict=1)
    with pytest.raises(ValueError, match="not both"):
        sage_diffusers.apply(unet(), variant="fp8", plan=AttentionPlan(layers={}, default="fp16", threshold=0.9))
    with pytest.raises(TypeError, match="has weights"):
        sage_diffusers.SageAttnProcessor(torch.nn.Linear(2, 2), "x", None, None)
