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

    return _get_classes(config)


def build_model(config: dict[str, Any]):
    """The mlx-lm model a config builds, with lazy (unevaluated) parameters: cheap."""
    try:
        model_class, args_class = model_classes(config)
    except ValueError as exc:
        raise SourceError(f"mlx-lm cannot build {config.get('model_type')!r}: {exc}") from None
    try:
        return model_class(args_class.from_dict(config))
    except (TypeError, KeyError, ValueError) as exc:  # a key mlx-lm's model needs is missing
        raise SourceError(
            f"config.json does not describe an mlx-lm {config.get('model_type')} model: {exc}"
        ) from None


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
