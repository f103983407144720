"""Reference-segmentation methods behind one interface (:mod:`prosam.methods.base`)."""

from prosam.methods.base import MethodOutput, Reference, ReferenceMethod, Target
from prosam.methods.registry import METHODS, build_method

__all__ = ["METHODS", "MethodOutput", "Reference", "ReferenceMethod", "Target", "build_method"]
