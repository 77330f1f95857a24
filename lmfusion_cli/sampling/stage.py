"""`run_sample(cfg)`: the `lmfusion sample` stage — load the checkpoint, run one task, write the folder.

Output folder (written whole into a temp folder, then renamed: a crash never leaves a half folder):

    OUT/images/{index:05d}.png        t2i: one per sample; interleaved: {doc:05d}-{k:02d}.png
    OUT/grid.png                      every image, tiled (t2i, interleaved with images)
    OUT/samples.jsonl                 t2i: prompt, seed, every setting, checkpoint and step, file
    OUT/captions.jsonl                caption: key (the image path), caption, settings
    OUT/interleaved.jsonl             interleaved: prompt, seed, segments (text / image file), stop reason
    OUT/config.yaml                   the resolved SampleConfig
    OUT/manifest.json                 kind "samples": inputs, counts (kept / skipped by reason), file hashes

PNG bytes depend only on the pixels (fixed settings, no metadata), and the pixels only on the seed,
so the same command gives byte-identical images on the same machine.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import TMP_MARK, atomic_dir, atomic_write_text
from lmfusion_cli.common.configs import config_hash, config_to_dict, dump_yaml
from lmfusion_cli.common.devices import resolve_device
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, file_entry, write_manifest
from lmfusion_cli.common.output_folder import disk_full_error, folder_bytes, is_disk_full, output_lock
from lmfusion_cli.sampling.config import SampleConfig, options_of
from lmfusion_cli.sampling.io import jsonl_text, list_images, make_grid, png_bytes, read_prompts

log = logging.getLogger(__name__)


def _prompts(cfg: SampleConfig) -> list[str]:
    return [cfg.prompt] if cfg.prompt is not None else read_prompts(cfg.prompts)


def check_prompt_lengths(prompts: list[str], model, tokenizer) -> None:
    """Refuse (one sentence) a prompt that cannot fit the model's positions beside one image and its
    BOI/EOI/bos/eos; issue 17: it used to run past the positions with only a warning."""
    positions = getattr(model.base.config, "max_position_embeddings", None)
    if not positions:
        return
    room = positions - model.num_image_tokens - 4
    for number, prompt in enumerate(prompts, start=1):
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n > room:
            raise UserError(
                f"Prompt {number} is {n} tokens, but the model has room for {room} beside an image "
                f"({positions} positions, {model.num_image_tokens} image tokens); shorten it"
            )


def _write_images(folder: Path, names: list[str], images: list, columns: int) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        (folder / "images" / name).write_bytes(png_bytes(image))
    if images:
        (folder / "grid.png").write_bytes(png_bytes(make_grid(images, columns)))


def _t2i(cfg: SampleConfig, loaded, folder: Path, source: dict[str, Any]) -> SkipLog:
    from lmfusion_cli.sampling.generate import generate_images

    out = generate_images(
        loaded.model,
        _prompts(cfg),
        tokenizer=loaded.tokenizer,
        vae=loaded.codec,
        options=options_of(cfg),
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        num_per_prompt=cfg.num_per_prompt,
    )
    names = [f"{r['index']:05d}.png" for r in out.records]
    _write_images(folder, names, out.images, cfg.grid_columns)
    records = [{**r, **source, "file": f"images/{name}"} for r, name in zip(out.records, names)]
    (folder / "samples.jsonl").write_text(jsonl_text(records), encoding="utf-8")
    skips = SkipLog()
    skips.keep(len(records))
    return skips


def _caption(cfg: SampleConfig, loaded, folder: Path, source: dict[str, Any]) -> SkipLog:
    from lmfusion_cli.sampling.captioning import caption_images

    result = caption_images(
        loaded.model,
        list_images(cfg.images),
        tokenizer=loaded.tokenizer,
        vae=loaded.codec,
        options=options_of(cfg),
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    if not result.records:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(result.skips.skipped.items()))
        raise UserError(f"None of the {result.skips.num_skipped} images could be read ({reasons}); check --images.")
    settings = {"decoding": cfg.decoding, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "cache": cfg.cache}
    if cfg.decoding == "beam":
        settings.update(num_beams=cfg.num_beams, length_penalty=cfg.length_penalty, rerank=cfg.rerank)
    if cfg.decoding == "top-p":
        settings.update(top_p=cfg.top_p, temperature=cfg.temperature)
    records = [{**r, **settings, **source} for r in result.records]
    (folder / "captions.jsonl").write_text(jsonl_text(records), encoding="utf-8")
    return result.skips


def _interleaved(cfg: SampleConfig, loaded, folder: Path, source: dict[str, Any]) -> SkipLog:
    from lmfusion_cli.sampling.interleaved import generate_interleaved

    docs = generate_interleaved(
        loaded.model,
        _prompts(cfg),
        tokenizer=loaded.tokenizer,
        vae=loaded.codec,
        options=options_of(cfg),
        max_images=cfg.max_images,
        seed=cfg.seed,
    )
    names, images, records = [], [], []
    for d, doc in enumerate(docs):
        segments = []
        for segment in doc.segments:
            if segment["type"] == "image":
                name = f"{d:05d}-{segment['image']:02d}.png"
                names.append(name)
                images.append(doc.images[segment["image"]])
                segments.append({"type": "image", "file": f"images/{name}"})
            else:
                segments.append({"type": "text", "text": segment["text"], "token_ids": segment["token_ids"]})
        records.append(
            {
                "index": d,
                "prompt": doc.prompt,
                "seed": doc.seed,
                "segments": segments,
                "stop_reason": doc.stop_reason,
                "cfg_scale": cfg.cfg_scale,
                "steps": cfg.steps,
                "sampler": cfg.sampler,
                "decoding": cfg.decoding,
                **source,
            }
        )
    _write_images(folder, names, images, cfg.grid_columns)
    (folder / "interleaved.jsonl").write_text(jsonl_text(records), encoding="utf-8")
    skips = SkipLog()
    skips.keep(len(records))
    return skips


def _remove_own_stale_temps(out: Path) -> None:
    """Delete leftovers of an interrupted run into `out` (`OUT.tmp-*` siblings), nobody else's."""
    if out.parent.is_dir():
        for p in out.parent.glob(f"{out.name}{TMP_MARK}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


TASKS = {"t2i": _t2i, "caption": _caption, "interleaved": _interleaved}


def run_sample(cfg: SampleConfig) -> dict[str, Any]:
    """Run `cfg.task` and write `cfg.out` (see the module docstring); returns the output manifest.
    One process at a time per `cfg.out` (issue 17: `output_lock`)."""
    with output_lock(cfg.out, "sample"):
        return _run_sample(cfg)


def _run_sample(cfg: SampleConfig) -> dict[str, Any]:
    from lmfusion_cli.sampling.loading import load_for_sampling

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"Output folder {out} is not empty; pass --overwrite to replace it or choose another --out.")
    _remove_own_stale_temps(out)
    if cfg.task != "caption":
        _prompts(cfg)  # an empty or broken prompt file fails before the model loads
    loaded = load_for_sampling(
        cfg.checkpoint, base=cfg.base, tokenizer=cfg.tokenizer, vae=cfg.vae, device=resolve_device(cfg.device)
    )
    if cfg.task != "caption":
        check_prompt_lengths(_prompts(cfg), loaded.model, loaded.tokenizer)
    source = {"checkpoint": str(loaded.checkpoint.model_dir), "step": loaded.checkpoint.step}
    log.info("sampling %s from %s (step %s)", cfg.task, loaded.checkpoint.model_dir, loaded.checkpoint.step)
    with atomic_dir(out, overwrite=True) as tmp:  # on any error the temp folder is removed
        try:
            skips = TASKS[cfg.task](cfg, loaded, tmp, source)
            atomic_write_text(tmp / "config.yaml", dump_yaml(cfg))
            files = {p.relative_to(tmp).as_posix(): file_entry(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = write_manifest(
                tmp,
                "samples",
                task=cfg.task,
                inputs=loaded.describe(),
                config=config_to_dict(cfg),
                config_hash=config_hash(cfg),
                files=files,
                **skips.to_dict(),
            )
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise disk_full_error(
                out,
                "sample",
                folder_bytes(tmp),  # at least what it had written
                "nothing was written to it (the previous folder, if any, is intact)",
            ) from None
    log.info("wrote %s: %s", out / MANIFEST_NAME, skips.summary())
    return manifest
