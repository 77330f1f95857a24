"""`lmfusion evaluate`: the shapes, text and COCO suites → metrics.json, report.md, plots (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigOption, set_option

SetOption = set_option("--set text.fields.context=goal")


def command(
    suite: Annotated[str | None, typer.Option(help="shapes | text | coco | all (coco only with --coco-root).")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run folder (newest complete checkpoint), step folder or model folder.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (a rerun resumes it).")] = None,
    num_items: Annotated[int | None, typer.Option(help="shapes: held-out items to generate and caption.")] = None,
    shapes_seed: Annotated[
        int | None, typer.Option(help="shapes: seed of the held-out items (not the training data's).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="shapes: a prepared shapes set whose test split is used instead.")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="text: lm-eval task names and/or task YAML paths, comma-separated, e.g. hellaswag,siqa,winogrande,piqa (default: the shipped tiny set)."
        ),
    ] = None,
    text_limit: Annotated[int | None, typer.Option(help="text: score only the first N documents of each task.")] = None,
    text_items: Annotated[
        Path | None, typer.Option(help="text: instead of --tasks, a multiple-choice JSONL file or datasets folder.")
    ] = None,
    text_split: Annotated[str | None, typer.Option(help="text: split of a DatasetDict folder.")] = None,
    coco_root: Annotated[
        Path | None, typer.Option(help="coco: folder with annotations/captions_val2014.json and val2014/.")
    ] = None,
    karpathy_split: Annotated[
        Path | None, typer.Option(help="coco: Karpathy's dataset_coco.json (its test images are captioned).")
    ] = None,
    num_caption_images: Annotated[
        int | None, typer.Option(help="coco: caption a seeded subset of this many test images.")
    ] = None,
    num_prompts: Annotated[
        int | None, typer.Option(help="coco: caption prompts to generate for FID / CLIP score (default 30000).")
    ] = None,
    coco_seed: Annotated[
        int | None, typer.Option(help="coco: seed of the prompt draw; prompt i uses seed + i.")
    ] = None,
    inception: Annotated[
        Path | None,
        typer.Option(
            help="coco: local Inception weights for FID (inception-2015-12-05.pt; default: clean-fid's own, downloaded when online)."
        ),
    ] = None,
    clip_arch: Annotated[
        str | None, typer.Option(help="coco: open_clip architecture for the CLIP score (default ViT-L-14).")
    ] = None,
    clip_pretrained: Annotated[
        str | None,
        typer.Option(help="coco: open_clip pretrained tag (default openai; downloaded by open_clip when online)."),
    ] = None,
    clip_weights: Annotated[
        Path | None, typer.Option(help="coco: local open_clip weights file (instead of the tag).")
    ] = None,
    clip_config: Annotated[
        Path | None, typer.Option(help="coco: open_clip JSON config of a custom architecture.")
    ] = None,
    fid_stats_dir: Annotated[
        Path | None, typer.Option(help="coco: cache of FID reference statistics (default OUT/coco/fid_stats).")
    ] = None,
    cfg_scale: Annotated[
        str | None,
        typer.Option(
            help="Classifier-free guidance scales, comma-separated (1 = off); coco default 1.0,1.55 (LMFusion Table 1), shapes 1.55."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps per image.")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm | ddim | dpm-solver | euler")] = None,
    decoding: Annotated[str | None, typer.Option(help="Caption decoding: greedy | beam | top-p.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Most tokens per caption.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts, images or text sequences per forward pass.")] = None,
    ptb_tokenizer: Annotated[str | None, typer.Option(help="Caption tokenization: auto | java | python.")] = None,
    base: Annotated[
        str | None, typer.Option(help="Base LM folder (default: the one the checkpoint points at).")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder (default: the run's).")] = None,
    vae: Annotated[str | None, typer.Option(help="VAE folder (default: the one the run recorded).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="Delete an earlier evaluation in --out instead of resuming it.")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Measure a checkpoint: image understanding and generation, and preserved text ability.

    Writes OUT/metrics.json, OUT/report.md (plots, image grid with prompts), the raw generations and a
    manifest. A rerun resumes: images already generated are not made again. Any config field can be set
    with --set, e.g. --set text.fields.context=goal --set 'text.fields.choices=[sol1, sol2]'.

    Examples:

      lmfusion evaluate --suite shapes --checkpoint runs/tiny --out eval/shapes --num-items 200 --steps 25

      lmfusion evaluate --suite text --checkpoint runs/tiny --out eval/text

      lmfusion evaluate --suite text --checkpoint runs/small --out eval/mine --tasks my_task.yaml

      lmfusion evaluate --suite coco --checkpoint runs/coco --out eval/coco --coco-root data/coco --karpathy-split data/coco/dataset_coco.json

      lmfusion evaluate --suite text --checkpoint runs/small --out eval/llama --tasks hellaswag,siqa,winogrande,piqa

      lmfusion evaluate --suite all --checkpoint runs/tiny --out eval/all
    """
    from lmfusion_cli.config import resolve_config
    from lmfusion_cli.evaluation.config import EvaluateConfig

    cfg = resolve_config(
        EvaluateConfig,
        config,
        overrides,
        {
            "suite": suite,
            "checkpoint": checkpoint,
            "out": out,
            "batch_size": batch_size,
            "ptb_tokenizer": ptb_tokenizer,
            "base": base,
            "tokenizer": tokenizer,
            "vae": vae,
            "device": device,
            "overwrite": overwrite,
            "shapes.num_items": num_items,
            "shapes.seed": shapes_seed,
            "shapes.data": data,
            "text.tasks": _csv(tasks),
            "text.limit": text_limit,
            "text.items": text_items,
            "text.split": text_split,
            "coco.root": coco_root,
            "coco.karpathy_split": karpathy_split,
            "coco.num_caption_images": num_caption_images,
            "coco.num_prompts": num_prompts,
            "coco.seed": coco_seed,
            "coco.inception": inception,
            "coco.clip_arch": clip_arch,
            "coco.clip_pretrained": clip_pretrained,
            "coco.clip_weights": clip_weights,
            "coco.clip_config": clip_config,
            "coco.fid_stats_dir": fid_stats_dir,
            "sampling.cfg_scale": _numbers(_csv(cfg_scale)),
            "sampling.steps": steps,
            "sampling.sampler": sampler,
            "sampling.decoding": decoding,
            "sampling.max_new_tokens": max_new_tokens,
        },
    )
    from lmfusion_cli.evaluation.stage import run_evaluate

    run_evaluate(cfg)


def _csv(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _numbers(values: list[str] | None) -> list[float | str] | None:
    """Numbers where they parse (a word is left as is, for the config check to name)."""
    if values is None:
        return None
    out: list[float | str] = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            out.append(v)
    return out
