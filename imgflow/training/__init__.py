"""Models and how they train: networks, optimizers, hardware, checkpoints, weights, tuning and the time budget."""
