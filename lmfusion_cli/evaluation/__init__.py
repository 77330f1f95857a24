"""Evaluation (issue 9): caption metrics, FID, CLIP score, the shapes checker, the text suite and reports.

One concept per module: `ptb` (caption tokenization), `metrics` (CIDEr & co, Fréchet distance),
`fid` (Inception features, cached reference statistics), `clip_score`, `shapes_checker` (images),
`shapes_captions` (captions), `text_suite` + `lm_eval_adapter` (text benchmarks through
lm-evaluation-harness) + `text_data` (the shipped set; `tasks/` its lm-eval YAML), `coco` (layout, split,
COCO-30K prompt manifest), `report` (metrics.json, report.md, plots), `generations` (the resumable folder of
generations both image suites share), `shapes_suite` + `coco_suite` (the runs), `config` + `suite_inputs` +
`suite_runs` + `stage` (`lmfusion evaluate`: `EvaluateConfig`, inputs checked first, each suite bound to the
loaded model, `run_evaluate`).
The suites import no model: they take plain callables; only `stage` loads a checkpoint (through
sampling's API) and plugs the sampler in."""
