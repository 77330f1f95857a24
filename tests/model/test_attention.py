"""The hybrid mask: predicates == the definition; FlexAttention == dense SDPA."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.model import TEXT
from lmfusion_cli.model.attention import Attention, MaskInfo, dense_mask

from .helpers import mixed_batch, tiny_model
from .naive import reference_mask


def _info(batch):
    return MaskInfo(batch.image_index, batch.image_index, batch.document_ids, batch.document_ids, 0)


def test_dense_mask_equals_definition_on_packed_multi_image_batch():
    model = tiny_model("llama3")
    batch, _ = mixed_batch(model, row_length=60)  # several rows, several documents, padding
    assert batch.input_ids.shape[0] > 1 and (batch.document_ids < 0).any()
    assert torch.equal(dense_mask(_info(batch)), reference_mask(batch))
    # no query row is fully masked (padding sees padding), so softmax never yields NaN
    assert dense_mask(_info(batch)).any(dim=-1).all()


def test_flex_equals_sdpa_kernel_level():
    model = tiny_model("llama3")
    batch, _ = mixed_batch(model)
    B, T = batch.input_ids.shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, 4, T, 8, generator=g)
    k, v = torch.randn(B, 2, T, 8, generator=g), torch.randn(B, 2, T, 8, generator=g)
    with torch.no_grad():
        dense = Attention(_info(batch), "sdpa")(q, k, v, scale=8**-0.5)
        flex = Attention(_info(batch), "flex")(q, k, v, scale=8**-0.5)
    real = (batch.document_ids >= 0)[:, None, :, None].expand_as(dense)
    torch.testing.assert_close(flex[real], dense[real], atol=1e-5, rtol=1e-5)


def test_flex_model_equals_sdpa_model_on_mixed_packed_batch():
    sdpa = tiny_model("qwen3")
    flex = tiny_model("qwen3", attention_backend="flex")
    batch, latents = mixed_batch(sdpa, row_length=60)
    t = torch.tensor([100.0, 300.0, 600.0, 900.0])
    with torch.no_grad():
        a = sdpa.forward_segment(batch, latents, t)
        b = flex.forward_segment(batch, latents, t)
    text = batch.modality == TEXT
    torch.testing.assert_close(b.text_logits[text], a.text_logits[text], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.image_prediction, a.image_prediction, atol=1e-5, rtol=1e-5)


def test_flex_backward_on_cpu_raises_a_clear_error():
    model = tiny_model("llama3", attention_backend="flex")
    batch, latents = mixed_batch(model)
    with pytest.raises(RuntimeError, match="attention_backend='sdpa'"):
        model(batch, latents)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flex_equals_sdpa_outputs_and_gradients_on_gpu():
    wide = {"hidden_size": 64}  # head_dim 16: flex attention's kernels need at least 16 on GPU
    sdpa = tiny_model("llama3", base_overrides=wide).cuda()
    flex = tiny_model("llama3", base_overrides=wide, attention_backend="flex").cuda()
    batch, latents = mixed_batch(sdpa, row_length=60)
    batch, latents = batch.to("cuda"), latents.cuda()
    t = torch.tensor([100.0, 300.0, 600.0, 900.0], device="cuda")
    noise = torch.randn_like(latents)
    outs = [m(batch, latents, timesteps=t, noise=noise) for m in (sdpa, flex)]
    torch.testing.assert_close(outs[1].loss, outs[0].loss, atol=1e-4, rtol=1e-4)
    for out in outs:
        out.loss.backward()
    for (name, p), q in zip(sdpa.named_parameters(), flex.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


# ---- kernel choice (issue 22): masked GQA must never reach the math kernel on CUDA --------------------
from lmfusion_cli.model.attention import expand_kv, resolve_backend, sdpa_kv  # noqa: E402


def test_auto_backend_is_flex_on_cuda_and_sdpa_on_cpu():
    assert resolve_backend("auto", "cuda") == "flex"
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("sdpa", "cuda") == "sdpa" and resolve_backend("flex", "cpu") == "flex"


def test_sdpa_on_cuda_expands_masked_gqa_instead_of_enable_gqa():
    q, k, v = torch.randn(1, 8, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    k2, v2, gqa = sdpa_kv(q, k, v, masked=True, device_type="cuda")
    assert gqa is False and k2.shape == v2.shape == (1, 8, 5, 4)  # full heads: fused kernels accept it
    k2, v2, gqa = sdpa_kv(q, k, v, masked=True, device_type="cpu")
    assert gqa is True and k2 is k and v2 is v  # CPU: no copy
    k2, v2, gqa = sdpa_kv(q, k, v, masked=False, device_type="cuda")
    assert gqa is True and k2 is k  # unmasked GQA has a fused (flash) kernel
    _, _, gqa = sdpa_kv(q, q, q, masked=True, device_type="cuda")
    assert gqa is False  # no GQA at all


def test_flex_gets_one_dtype_under_autocast():
    """Autocast skips flex_attention: under bf16 autocast rotary embedding leaves q, k in fp32 (fp32 residual)
    beside a bf16 v. `flex_qkv` hands flex the autocast dtype, and the common dtype without autocast."""
    from lmfusion_cli.model.attention import flex_qkv

    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {t.dtype for t in flex_qkv(q, k, v)} == {torch.bfloat16}
    assert {t.dtype for t in flex_qkv(q, k, v)} == {torch.float32}
    same = flex_qkv(q, k, v.float())
    assert same[0] is q and same[1] is k  # nothing to cast: no copy


def test_model_under_bf16_autocast_hands_flex_bf16_qkv(monkeypatch):
    """The routed model itself under CPU bf16 autocast (frozen text stored in bf16, as the GPU configs
    train): every flex call gets bf16 q, k and v (without `flex_qkv`: fp32, fp32, bf16)."""
    from torch.nn.attention.flex_attention import flex_attention

    import lmfusion_cli.model.attention as attention
    from lmfusion_cli.training.distributed import store_frozen_bf16_

    seen = []

    def spy(q, k, v, **kwargs):  # records what flex gets, then runs it (eager: no compile in the test)
        seen.append((q.dtype, k.dtype, v.dtype))
        return flex_attention(q, k, v, **kwargs)

    monkeypatch.setattr(attention, "_compiled_flex", lambda device_type: spy)
    model = tiny_model("llama3", attention_backend="flex")
    store_frozen_bf16_(model)
    batch, latents = mixed_batch(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.forward_segment(batch, latents, torch.full((latents.shape[0],), 500.0))
    assert seen and set(seen) == {(torch.bfloat16,) * 3}


def test_expanded_kv_equals_enable_gqa():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, s, 7, 4, generator=g) for s in (6, 2, 2))
    mask = torch.rand(2, 1, 7, 7, generator=g) > 0.3
    mask[..., 0] = True
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    expanded = F.scaled_dot_product_attention(q, expand_kv(k, 3), expand_kv(v, 3), attn_mask=mask)
    torch.testing.assert_close(expanded, reference, atol=1e-6, rtol=1e-6)
    assert torch.equal(expand_kv(k, 3)[:, 4], k[:, 1])  # query head 4 of 6 reads kv head 4 // 3


def test_flex_sampling_does_not_recompile_per_step():
    """Denoising steps and text decoding with a growing cache reuse the compiled flex kernel: the
    offset is a tensor and the key length is padded to 128-key buckets (issue 22)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from lmfusion_cli.model import image_segment, left_pad, text_segment

    model = tiny_model("llama3", attention_backend="flex")
    N = model.num_image_tokens
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        cache = model.forward_segment(
            left_pad([[1, 5, 6, 7, model.boi_id], [1, model.boi_id]]), update_cache=True
        ).cache
        x_t = torch.randn(2, 4, 8, 8)

        def denoise(cache):
            return model.forward_segment(
                image_segment(cache.next_positions, N), x_t, torch.tensor([500.0, 500.0]), cache=cache
            ).image_prediction

        def decode(cache, token):
            ids = torch.full((2, 1), token)
            return model.forward_segment(
                text_segment(ids, cache.next_positions[:, None]), cache=cache, update_cache=True
            ).cache

        for _ in range(2):  # warm-up: the first compiles
            denoise(cache)
            cache = decode(cache, 9)
        compiled = counters["stats"]["unique_graphs"]
        for step in range(6):
            denoise(cache)
            cache = decode(cache, 10 + step)
    assert compiled >= 1
    assert counters["stats"]["unique_graphs"] == compiled, dict(counters["recompiles"] or counters["stats"])
