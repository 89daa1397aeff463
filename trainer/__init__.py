"""The VLAE family, its data, its training loop and the Ray Train launcher."""
