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
