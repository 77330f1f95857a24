"""The embedded tiny LM: byte-level BPE tokenizer + Llama pretraining on the repo's corpus (issue 4).

Used by `scripts/build_assets.py`; owns the tokenizer recipe, the LM config, the pretraining loop and
the LM's quality figures (held-out perplexity, greedy continuations). The corpus itself comes from
`lmfusion_cli/data/corpus.py`. Everything is seeded and runs on CPU."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmfusion_cli.common.progress import progress
from lmfusion_cli.data.corpus import Document

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
BOI, EOI = "<|begin_of_image|>", "<|end_of_image|>"  # the model package looks for exactly these names
SPECIAL_TOKENS = (BOS, EOS, PAD, BOI, EOI)
GREEDY_PROMPTS = ("a red", "The sky is", "Two plus three is", "Once upon a time,", "A cow")


@dataclass(frozen=True)
class LMSettings:
    vocab_size: int = 3072
    """Target BPE vocabulary (the learned one may be smaller: merges stop at whole words)."""
    hidden_size: int = 256
    """Model width."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention (query) heads."""
    num_kv_heads: int = 2
    """Key/value heads (GQA: fewer than num_heads)."""
    intermediate_size: int = 688
    """SwiGLU hidden width."""
    max_positions: int = 512
    """max_position_embeddings of the config (RoPE, no learned positions)."""
    seq_len: int = 128
    """Training sequence length in tokens (documents packed, BOS/EOS between them)."""
    batch_size: int = 16
    """Sequences per step."""
    steps: int = 400
    """Optimizer steps (warmup + cosine decay over them)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 40
    """Linear warmup steps."""
    weight_decay: float = 0.05
    """AdamW weight decay (matrices only)."""
    max_minutes: float = 45.0
    """Safety cap on training time; a run that hits it stops early and says so in the report."""

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.seq_len >= self.max_positions:
            raise ValueError("seq_len must be below max_positions")


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` that adds BOS in front of every encoded text (as Llama 3).

    Decoding with `skip_special_tokens=True` returns the text exactly (byte-level, no normalisation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[BOI, EOI],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_model(settings: LMSettings, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_positions,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def token_stream(tokenizer, docs: Sequence[Document]) -> torch.Tensor:
    """All documents as one 1-D id stream: BOS text EOS BOS text EOS ... (int64)."""
    ids = tokenizer([d.text for d in docs], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return torch.tensor([t for seq in ids for t in seq + [eos]], dtype=torch.long)


def lr_at(step: int, settings: LMSettings) -> float:
    """Linear warmup to `lr`, then cosine decay to 10 % of it."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    frac = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def pretrain(model, stream: torch.Tensor, settings: LMSettings, seed: int) -> dict:
    """Train on random `seq_len + 1` windows of `stream`; returns figures for the report."""
    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    span = settings.seq_len + 1
    model.train()
    start, losses, step = time.time(), [], 0
    bar = progress(total=settings.steps, desc="tiny LM", unit="step")
    for step in range(settings.steps):
        if (time.time() - start) / 60 > settings.max_minutes:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        offsets = torch.randint(0, len(stream) - span, (settings.batch_size,), generator=gen)
        batch = torch.stack([stream[o : o + span] for o in offsets.tolist()])  # (B, T+1)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        # HF shifts labels internally: position t predicts input t+1 — labels = inputs is right.
        if not torch.isfinite(loss):
            raise RuntimeError(f"tiny LM loss is not finite at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        if step % 100 == 0 or step == settings.steps - 1:
            print(
                f"  lm step {step:5d}  loss {loss.item():.3f}  lr {lr_at(step, settings):.2e}  "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
    bar.close()
    steps_done = len(losses)
    return {
        "steps_done": steps_done,
        "stopped_early": steps_done < settings.steps,
        "train_minutes": round((time.time() - start) / 60, 2),
        "final_loss_mean_last_50": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        "tokens_seen": steps_done * settings.batch_size * settings.seq_len,
    }


@torch.no_grad()
def perplexity(model, tokenizer, docs: Sequence[Document], batch_size: int = 32) -> float:
    """exp(mean NLL) over every token after BOS of each document (its text and the closing EOS)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(docs), batch_size):
        enc = [
            ids + [tokenizer.eos_token_id] for ids in tokenizer([d.text for d in docs[i : i + batch_size]])["input_ids"]
        ]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, seq in enumerate(enc):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        target, valid = ids[:, 1:], mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total_nll += nll[valid].sum().item()
        total_tokens += int(valid.sum())
    return math.exp(total_nll / max(1, total_tokens))


@torch.no_grad()
def greedy_samples(model, tokenizer, prompts: Sequence[str] = GREEDY_PROMPTS, max_new_tokens: int = 24) -> dict:
    model.eval()
    out = {}
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        ids = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        out[prompt] = tokenizer.decode(ids[0], skip_special_tokens=True)
    return out


def save_lm(model, tokenizer, folder: Path) -> None:
    model.generation_config.do_sample = False
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def settings_dict(settings: LMSettings) -> dict:
    return asdict(settings)
