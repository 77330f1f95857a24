"""Sampling: text→image with classifier-free guidance and a prefix KV cache, image→text, interleaved.

The Python API (used by `lmfusion sample` and by `evaluate`) is exported here as it lands; files:
`schedulers.py` (diffusers samplers configured from the model), `io.py` (prompt/image lists, PNGs,
grids, JSONL)."""
