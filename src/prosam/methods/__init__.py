"""Reference-segmentation methods: the interface, the registry, and each method's module.

Names are exported lazily, so ``prosam.methods.registry`` (which the CLI reads to build its
help) loads no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "InstanceMask": "prosam.methods.base",
    "MethodOutput": "prosam.methods.base",
    "Reference": "prosam.methods.base",
    "ReferenceMethod": "prosam.methods.base",
    "Target": "prosam.methods.base",
    "MethodSpec": "prosam.methods.registry",
    "build_method": "prosam.methods.registry",
    "get_method": "prosam.methods.registry",
    "list_methods": "prosam.methods.registry",
    "method_names": "prosam.methods.registry",
    "register_method": "prosam.methods.registry",
    "capabilities_of": "prosam.methods.capabilities",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prosam.methods' has no attribute {name!r}")
