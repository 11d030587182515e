"""Training: stages, the engine that runs them, losses, folds."""
