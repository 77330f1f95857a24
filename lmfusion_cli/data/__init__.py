"""Data stages: `prepare` (sources → image/caption shards) and `encode-latents` (shards → latent cache).

Files: `sources.py` (listing each source, loading pixels; `item_specs.py` what is listed, `hf_sources.py` the
Hugging Face layouts), `images.py` (decode → RGB → resize/crop →
bytes), `shards.py` (webdataset tar writer and tolerant reader), `prepare.py` (the prepare stage),
`latents.py` (cache format, reader `open_latent_cache`,
`verify_cache`), `encode.py` (the encode-latents stage; `encode_jobs.py` one process's share), `restart.py`
(shard-by-shard restart records), `config.py` (PrepareConfig, EncodeConfig), `shapes.py` (the synthetic shapes
set), `corpus.py` + `corpus_words.py` (the tiny LM's text corpus, for text-only negatives), `interleaved.py`
(interleaved documents). The VAE (loading, identity, encoding, latent scaling) is `common/vae.py`'s, shared
with sampling."""
