"""Training: configs, optimizer and schedule, the trainer, checkpoints of a run."""
