"""Shared plumbing: errors, atomic writes, manifests, config loading, progress, logging.

Imports nothing else of ours, so every layer may use it."""
