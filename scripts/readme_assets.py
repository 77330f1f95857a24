"""Render `lmfusion_cli/assets/README.md` from `build_report.json` (figures are measured, never typed).

Used by `scripts/build_assets.py`; owns only the README's wording and layout."""

from __future__ import annotations

from typing import Any


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _minutes(report: dict[str, Any]) -> str:
    parts = ", ".join(f"{name.upper()} {minutes} min" for name, minutes in sorted(report["minutes_by_part"].items()))
    if report.get("rebuilt"):
        return f"{report['minutes']} min wall clock for a rebuild of the {report['rebuilt'].upper()} alone ({parts})"
    return f"{report['minutes']} min wall clock ({parts})"


def _lm_section(lm: dict[str, Any] | None) -> list[str]:
    if not lm:
        return ["## tiny-lm", "", "Not built yet.", ""]
    s, c, t = lm["settings"], lm["corpus"], lm["training"]
    ppl = lm["heldout_perplexity"]
    lines = [
        "## tiny-lm: tokenizer + `LlamaForCausalLM`",
        "",
        f"- Architecture: Llama (RMSNorm, SwiGLU, RoPE θ=10000, GQA), hidden {s['hidden_size']}, "
        f"{s['num_layers']} layers, {s['num_heads']} heads / {s['num_kv_heads']} KV heads, intermediate "
        f"{s['intermediate_size']}, max positions {s['max_positions']}, untied embeddings; "
        f"{lm['parameters'] / 1e6:.2f} M parameters, fp32 safetensors.",
        f"- Tokenizer: byte-level BPE (`tokenizers`), {lm['vocab_size']} tokens (target {s['vocab_size']}), "
        "special tokens `<|begin_of_text|>` (BOS, added in front of every encoded text), `<|end_of_text|>` (EOS), "
        "`<|pad|>`, `<|begin_of_image|>`, `<|end_of_image|>`.",
        f"- Corpus (`lmfusion_cli/data/corpus.py`): {c['train_documents']} documents, {c['train_characters']} "
        f"characters, {c['train_tokens']} tokens — shapes captions (every template) and a broader templated corpus "
        "(scenes, colour/animal/profession facts, positions, counting and sums, days, short stories).",
        f"- Training: {t['steps_done']} of {s['steps']} steps{' (stopped by the time cap)' if t['stopped_early'] else ''}"
        f", batch {s['batch_size']} × {s['seq_len']} tokens ({t['tokens_seen']} tokens seen), AdamW lr "
        f"{s['lr']} with {s['warmup_steps']} warmup steps and cosine decay to 10 %, weight decay "
        f"{s['weight_decay']}, gradient clipping 1.0; {t['train_minutes']} min.",
        "",
        "| held-out text | documents | sentences | perplexity | bound (vocab / 20) |",
        "|---|---|---|---|---|",
    ]
    for kind, value in ppl.items():
        lines.append(
            f"| {kind} | {c['heldout_documents'][kind]} | {c['heldout_sentences'][kind]} | {value:.3f} "
            f"| {lm['perplexity_bound_vocab_over_20']} |"
        )
    removed = ", ".join(f"{k} {v}" for k, v in c["heldout_sentences_removed_as_seen_in_training"].items())
    lines += [
        "",
        "Held-out documents come from their own random stream; every held-out sentence that also occurs in the "
        f"training documents was removed before measuring ({removed}), so no measured sentence was seen in "
        "training. Perplexity = exp(mean negative log-likelihood) of every token after BOS, EOS included.",
        "",
        "Greedy continuations (`model.generate(do_sample=False)`):",
        "",
    ]
    lines += [f"- `{prompt}` → `{text}`" for prompt, text in lm["greedy_samples"].items()]
    return lines + [""]


def _vae_section(vae: dict[str, Any] | None) -> list[str]:
    if not vae:
        return ["## tiny-vae", "", "Not built yet.", ""]
    s, t = vae["settings"], vae["training"]
    scaled = vae["heldout_scaled_latents"]
    joint = vae["psnr"][vae["saved_weights"]]
    psnr = vae["psnr"].get("decoder_phase", joint)  # reports from before the decoder phase have none
    d = vae.get("decoder_training")
    decoder_line = (
        [
            f"- Decoder phase: {d['steps_done']} of {s['decoder_steps']} steps"
            f"{' (stopped by the time cap)' if d['stopped_early'] else ''} training the decoder and "
            f"`post_quant_conv` alone (encoder and `quant_conv` frozen: the latents do not move), same loss and "
            f"batch, AdamW lr {s['decoder_lr']}, warmup + cosine; {d['train_minutes']} min. Held-out PSNR "
            f"{joint['psnr_mean_db']:.2f} dB → {psnr['psnr_mean_db']:.2f} dB; it makes triangles decode as "
            'triangles (docs/training.md, "What limits shape").'
        ]
        if d
        else []
    )
    return [
        "## tiny-vae: `diffusers.AutoencoderKL`",
        "",
        f"- Architecture: blocks {tuple(s['block_channels'])}, 1 layer each, {s['latent_channels']} latent "
        f"channels, GroupNorm {s['norm_num_groups']} groups; {s['resolution']}×{s['resolution']} pixels ↔ "
        f"latents {'×'.join(map(str, vae['latent_shape']))}; {vae['parameters'] / 1e6:.2f} M parameters.",
        f"- Training: {t['steps_done']} of {s['steps']} steps{' (stopped by the time cap)' if t['stopped_early'] else ''}"
        f", batch {s['batch_size']} from {s['num_train_images']} shapes images (`make_item`, seed "
        "of the build), loss MSE + "
        f"{s['l1_weight']}·L1 + {s['kl_weight']}·KL, AdamW lr {s['lr']} with {s['warmup_steps']} warmup steps "
        f"and cosine decay, gradient clipping 1.0, posterior log-variance bias initialised at "
        f"{s['logvar_bias_init']}; saved weights: {vae['saved_weights']} (EMA decay {s['ema_decay']}); "
        f"{t['train_minutes']} min.",
        *decoder_line,
        f"- Reconstruction PSNR on {psnr['num_images']} held-out shapes images (seed "
        f"{vae['heldout_images']['seed']}, posterior mean, 8-bit): **{psnr['psnr_mean_db']:.2f} dB** (mean over "
        f"images; {psnr['psnr_pooled_db']:.2f} dB from the pooled MSE).",
        f"- Latent scale and shift (in the config: `scaling_factor` {vae['scaling_factor']:.5f}, `shift_factor` "
        f"{vae['shift_factor']:.5f}) from {vae['latent_stats_source']}; use "
        "`(z - shift_factor) * scaling_factor`. Held-out latents after scaling: mean "
        f"{scaled['mean']}, std {scaled['std']}.",
        "",
    ]


TINY_LMFUSION_NOTE = (
    "`tiny-lmfusion/` is not made by this build: it is the demo recipe (`pipelines/configs/tiny.yaml`) "
    "trained in three cosine cycles (20,000 + 16,000 + 15,000 steps, the last generation-heavy) on these "
    "assets by `make tiny-lmfusion` (`pipelines/tiny_lmfusion.sh`); its "
    "`README.md` (model card) and `build.json` hold its figures and build times. It records the LM's config "
    "hash and the VAE's weights hash, so after `make assets` rebuild it too (loading it on other assets is "
    "refused)."
)


def render_readme(report: dict[str, Any]) -> str:
    sizes = report.get("bytes", {})
    lines = [
        "# Embedded default assets",
        "",
        "Generated by `scripts/build_assets.py` (`make assets`) from data the repo generates; do not edit by "
        "hand — rebuild instead. Load them like any checkpoint:",
        "",
        "```python",
        "from lmfusion_cli.assets import TINY_LM, TINY_VAE",
        "",  # as ruff formats the block
        "tokenizer = AutoTokenizer.from_pretrained(TINY_LM)",
        "model = AutoModelForCausalLM.from_pretrained(TINY_LM)",
        "vae = AutoencoderKL.from_pretrained(TINY_VAE)",
        "```",
        "",
        f"Sizes: tiny-lm {_mb(sizes.get('tiny-lm', 0))}, tiny-vae {_mb(sizes.get('tiny-vae', 0))}, total "
        f"{_mb(report.get('bytes_total', 0))}. Build: seed {report['seed']}, {report['threads']} torch thread(s) per process, "
        f"{'LM and VAE side by side' if report.get('jobs', 2) == 2 else 'LM then VAE'}, "
        f"{report['machine']['cpus']} CPUs, torch {report['machine']['torch']}, {_minutes(report)}"
        f"{' (quick build)' if report['quick'] else ''}. All figures: `build_report.json`.",
        "",
        TINY_LMFUSION_NOTE,
        "",
    ]
    return "\n".join(lines + _lm_section(report.get("lm")) + _vae_section(report.get("vae")))
