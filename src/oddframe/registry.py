"""Model registry: ``@register_model(name)`` adds a model class, ``build_model`` makes one.

As in timm, the registry is a plain dict filled by explicit decorators at import time of
:mod:`oddframe.models`; ``list_models()`` drives the tests, so a registered model is tested at once.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from oddframe.errors import ConfigError

_REGISTRY: dict[str, type[nn.Module]] = {}
M = TypeVar("M", bound=type[nn.Module])


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator that registers a model under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def deco(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def _ensure_loaded() -> None:
    # Importing the package runs every model module's decorator.
    import oddframe.models  # noqa: F401


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; a :class:`ConfigError` lists the known names otherwise."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_params(name: str) -> dict[str, Any]:
    """Constructor parameters of model ``name`` with their defaults (``inspect.Parameter.empty`` if none)."""
    sig = inspect.signature(get_model_class(name).__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def check_params(name: str, params: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the allowed keys if ``params`` has a key the model does not take."""
    allowed = model_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def build_model(name: str, **params: Any) -> nn.Module:
    """Instantiate registered model ``name`` with keyword ``params`` (checked against its constructor)."""
    check_params(name, params)
    return get_model_class(name)(**params)


def describe(name: str) -> str:
    """First line of the model class docstring."""
    doc = inspect.getdoc(get_model_class(name)) or ""
    return doc.splitlines()[0] if doc else ""
