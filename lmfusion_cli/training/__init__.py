"""`lmfusion train`: the training loop, its data mix, optimiser, checkpoints and distributed launch.

Entry point: `lmfusion_cli.training.loop.run_training(config)`."""
