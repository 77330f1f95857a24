"""`lmfusion evaluate`: the shapes, text and COCO suites → metrics.json, report.md, plots (issue 9)."""

from __future__ import annotations

from lmfusion_cli.commands.common import ConfigRequest, Flag, config_command
from lmfusion_cli.evaluation.config import EvaluateConfig

FLAGS = (
    "suite",
    "checkpoint",
    "out",
    "shapes.num_items",
    Flag("shapes.seed", "--shapes-seed"),
    Flag("shapes.data", "--data"),
    Flag("text.tasks", csv=True),
    Flag("text.limit", "--text-limit"),
    Flag("text.items", "--text-items"),
    Flag("text.split", "--text-split"),
    Flag("coco.root", "--coco-root"),
    "coco.karpathy_split",
    "coco.num_caption_images",
    "coco.num_prompts",
    Flag("coco.seed", "--coco-seed"),
    "coco.inception",
    "coco.clip_arch",
    "coco.clip_pretrained",
    "coco.clip_weights",
    "coco.clip_config",
    "coco.fid_stats_dir",
    Flag("sampling.cfg_scale", csv=True),
    "sampling.steps",
    "sampling.sampler",
    "sampling.decoding",
    "sampling.rerank",
    "sampling.max_new_tokens",
    "batch_size",
    "ptb_tokenizer",
    "base",
    "tokenizer",
    "vae",
    "device",
    "overwrite",
)


@config_command(EvaluateConfig, FLAGS, set_example="--set text.fields.context=goal")
def command(request: ConfigRequest) -> None:
    """Measure a checkpoint: image understanding and generation, and preserved text ability.

    Writes OUT/metrics.json, OUT/report.md (plots, image grid with prompts), the raw generations and a
    manifest. A rerun resumes: images already generated are not made again. Any config key below can be
    set with --set, e.g. --set text.fields.context=goal --set 'text.fields.choices=[sol1, sol2]'.

    Examples:

      lmfusion evaluate --suite shapes --checkpoint runs/tiny --out eval/shapes --num-items 200 --steps 25

      lmfusion evaluate --suite text --checkpoint runs/tiny --out eval/text

      lmfusion evaluate --suite text --checkpoint runs/small --out eval/mine --tasks my_task.yaml

      lmfusion evaluate --suite coco --checkpoint runs/coco --out eval/coco --coco-root data/coco --karpathy-split data/coco/dataset_coco.json

      lmfusion evaluate --suite text --checkpoint runs/small --out eval/llama --tasks hellaswag,siqa,winogrande,piqa

      lmfusion evaluate --suite all --checkpoint runs/tiny --out eval/all
    """
    cfg = request.resolve()
    from lmfusion_cli.evaluation.stage import run_evaluate

    run_evaluate(cfg)
