"""Sharing a trained model: `lmfusion export` folders, their model card, and `LMFusionPipeline`."""
