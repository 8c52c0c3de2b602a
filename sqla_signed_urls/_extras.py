"""Optional dependencies: import a driver only when a feature needs it, and say how to get it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .exceptions import ConfigurationError

__all__ = ["require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise ``ConfigurationError`` naming the extra.

    >>> oss2 = require("oss2", "oss", "OSSSigner")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{feature} needs the {module.partition('.')[0]!r} package: "
            f'pip install "sqla-signed-urls[{extra}]"'
        ) from exc
