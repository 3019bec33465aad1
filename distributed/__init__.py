"""Data, training loop, Ray Train/DeepSpeed plumbing and the `ppl-avvp` commands."""
