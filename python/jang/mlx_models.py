"""mlx-lm models built from a config: the one place jang reaches into mlx-lm's model registry.

mlx-lm has no public "model from config" call; `mlx_lm.utils._get_classes` is what its own
`load` uses. Every jang module that needs an mlx-lm model (the source view, GPTQ, the
runtime, evaluation) comes through here, so a change in mlx-lm touches one file.
"""

from __future__ import annotations

from typing import Any

from jang.errors import SourceError


def model_classes(config: dict[str, Any]) -> tuple[type, type]:
    """(Model, ModelArgs) of mlx-lm for `config`; ValueError when mlx-lm has no such family."""
    from mlx_lm.utils import _get_classes

    if not isinstance(config.get("model_type"), str):
        raise ValueError(f"model_type is {config.get('model_type')!r}, not a name")
    try:
        return _get_classes(config)
    except TypeError as exc:  # architectures that are not names
        raise ValueError(f"architectures {config.get('architectures')!r}: {exc}") from None


def build_model(config: dict[str, Any]):
    """The mlx-lm model a config builds, with lazy (unevaluated) parameters: cheap."""
    try:
        model_class, args_class = model_classes(config)
    except ValueError as exc:
        raise SourceError(f"mlx-lm cannot build {config.get('model_type')!r}: {exc}") from None
    wrong = _mistyped(args_class, config)
    if wrong:
        raise SourceError(
            f"config.json does not describe an mlx-lm {config.get('model_type')} model: {wrong}"
        )
    try:
        return model_class(args_class.from_dict(config))
    except Exception as exc:  # mlx-lm checks configs with asserts, TypeErrors, KeyErrors...
        raise SourceError(
            f"config.json does not describe an mlx-lm {config.get('model_type')} model: {exc}"
        ) from None


_NUMBER = (bool, int, float)  # interchangeable: configs write 1e4 for ints, 0 for False
_SCALARS = {int: _NUMBER, float: _NUMBER, bool: _NUMBER, str: (str,)}


def _mistyped(args_class: type, config: dict[str, Any]) -> str | None:
    """The first config value of the wrong kind for a plain annotation of mlx-lm's
    ModelArgs (a number, a string, or Optional of one): a list where a number belongs, a
    number where a name belongs. mlx-lm builds the model from any value and fails only in
    the forward pass, far from the cause."""
    import dataclasses
    import typing

    if not dataclasses.is_dataclass(args_class):
        return None
    try:
        hints = typing.get_type_hints(args_class)
    except Exception:  # annotations mlx-lm's module cannot resolve: nothing to check
        return None
    for field in dataclasses.fields(args_class):
        if field.name not in config:
            continue
        hint, value = hints.get(field.name), config[field.name]
        options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        kinds = [o for o in options if o is not type(None)]
        if not kinds or any(o not in _SCALARS for o in kinds):
            continue  # a container or class annotation: not checked
        if value is None and len(kinds) < len(options):
            continue
        if not any(isinstance(value, _SCALARS[o]) for o in kinds):
            return f"{field.name} is {value!r}, the model expects {hint}"
    return None


def float_model(source):
    """A `jang.source.ModelSource` as an mlx-lm model holding all its weights in float32
    (after the model's own `sanitize`), in eval mode."""
    import mlx.core as mx

    model = build_model(source.config)
    weights = {i.name: source.read(i.name).astype(mx.float32) for i in source.tensors()}
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    model.load_weights(list(weights.items()), strict=True)
    del weights
    mx.eval(model.parameters())
    model.eval()
    return model
