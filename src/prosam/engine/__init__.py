"""Loops: evaluation (and, later, training), alone or under torchrun."""
