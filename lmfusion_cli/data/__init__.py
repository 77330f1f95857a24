"""Data stages: `prepare` (sources → image/caption shards) and `encode-latents` (shards → latent cache)."""
