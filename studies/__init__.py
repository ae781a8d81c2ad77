"""Optuna searches over generator architectures and training settings (short training trials)."""
