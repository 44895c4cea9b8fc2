"""bakeoff: curate fine-tuning data, build held-out adjacent-domain test sets,
train (SFT, reward model, PPO) and rank every checkpoint on the full test set."""

__version__ = "0.1.0"
