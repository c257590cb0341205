"""Fitting: initialization, losses, the staged Adam optimization, and the avatar folder."""
