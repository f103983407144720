"""Evaluation loops over any method: the few-shot protocol, several entities per target, and
reference robustness; alone or under torchrun."""
