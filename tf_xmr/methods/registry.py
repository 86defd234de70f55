"""Method registry: ``method: acmr`` in a config -> the config dataclass and model class of that method."""

from __future__ import annotations

import dataclasses

from tf_xmr.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the config's ``method`` value, e.g. ``"acmr"``.
        config_class: frozen dataclass parsed from the config's ``model:`` section.
        model_class: ``CrossModalModel`` subclass built as ``model_class(config, spec)``.
        description: one line for ``--help`` and error messages.
    """

    name: str
    config_class: type
    model_class: type
    description: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_class: type, description: str = ""):
    """Class decorator registering a model class under ``name`` (one line per method module)."""

    def decorate(model_class):
        if name in _METHODS and _METHODS[name].model_class is not model_class:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = MethodSpec(name, config_class, model_class, description)
        return model_class

    return decorate


def get_method(name: str) -> MethodSpec:
    """Look up a method; the error lists what is registered."""
    import tf_xmr.methods  # noqa: F401  (importing the package registers every built-in method)

    if name not in _METHODS:
        raise ConfigError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS)) or 'none'} "
            "(a method outside tf_xmr must be imported before the config is loaded)"
        )
    return _METHODS[name]


def registered_methods() -> list[str]:
    import tf_xmr.methods  # noqa: F401  (importing the package registers every built-in method)

    return sorted(_METHODS)
