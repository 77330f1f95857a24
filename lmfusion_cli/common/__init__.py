"""Shared plumbing: errors, atomic writes, manifests, config loading, progress, logging, and the VAE
(`vae.py`: loading, identity, latent scaling, `LatentCodec`), which data, training and sampling share.

Imports nothing else of ours (but the shipped asset paths), so every layer may use it."""
