"""Find a model's decoder blocks, whatever the architecture calls them."""

from __future__ import annotations

from typing import Any

from torch import nn

from hpo.core.errors import UserError

# Known attribute paths, most common first: Llama/Qwen2/Mistral/Gemma/Phi (`model.layers`),
# GPT-2 (`transformer.h`), GPT-NeoX (`gpt_neox.layers`), OPT (`model.decoder.layers`),
# multimodal wrappers (`model.language_model.layers`).
KNOWN_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.blocks",
    "transformer.layers",
)


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    current: nn.Module | None = module
    for part in path.split("."):
        current = getattr(current, part, None)
        if current is None:
            return None
    return current


def num_hidden_layers(model: nn.Module) -> int:
    """The decoder layer count from the model's (text) config."""
    config: Any = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            return value
    raise UserError(f"cannot tell the layer count of {type(model).__name__} from its config")


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the `ModuleList` of decoder blocks, block `L` at index `L`.

    Raises:
        UserError: no known path matches and no module list has the config's layer count; the
            message lists the module lists that were found.
    """
    n_layers = num_hidden_layers(model)
    for path in KNOWN_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) == n_layers:
            return found
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if len(candidates) == 1:
        return candidates[0][1]
    lists = [
        f"{name} ({len(module)})"
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
    ]
    raise UserError(
        f"cannot find the {n_layers} decoder blocks of {type(model).__name__}: tried "
        f"{', '.join(KNOWN_PATHS)}; module lists found: {', '.join(lists) or 'none'}"
    )
