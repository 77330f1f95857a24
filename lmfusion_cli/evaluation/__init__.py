"""Evaluation (issue 9): caption metrics, FID, CLIP score, the shapes checker, the text suite and reports.

Each module owns one concept: `ptb` (caption tokenization), `metrics` (CIDEr & co, Fréchet distance),
`fid` (Inception features + cached reference statistics), `clip_score`, `shapes_checker`,
`text_suite`, `coco` (layout, split, prompt manifest), `report` (metrics.json, report.md, plots).
Nothing here imports a model: suites take plain callables, so the sampler plugs in from outside."""
