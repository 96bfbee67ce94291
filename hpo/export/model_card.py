"""The bundle's README.md: a model card with YAML front matter, like the Hub's steering bundles
(e.g. wisent-ai/qwen2.5-math-7b-wisent-caa)."""

from __future__ import annotations

from typing import Any

import yaml


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def model_card(meta: dict[str, Any]) -> str:
    """Render the model card for a bundle's `steering.json` contents."""
    model = meta["model"]
    val, test = meta["metrics"]["validation"], meta["metrics"]["test"]
    base = model["name_or_path"] + (f" ({model['gguf_file']})" if model.get("gguf_file") else "")
    metric = meta["objective"].get("scorer") or meta["objective"]["kind"]
    front = {
        "base_model": model["name_or_path"],
        "library_name": "transformers",
        "tags": ["steering", "activation-steering", meta["method"], "optuna", meta["trait"]],
        "metrics": [metric],
        "model-index": [
            {
                "name": _index_name(meta),
                "results": [
                    {
                        "task": {"type": "activation-steering", "name": meta["trait"]},
                        "dataset": {"type": meta["trait"], "name": meta["trait"], "split": split},
                        "metrics": [
                            {"type": metric, "name": f"{split}, steered", "value": m["steered"]},
                            {
                                "type": metric,
                                "name": f"{split}, unsteered",
                                "value": m["baseline"],
                            },
                        ],
                    }
                    for split, m in (("validation", val), ("test", test))
                ],
            }
        ],
    }
    layers = ", ".join(str(x) for x in meta["layers"])
    mode = meta["application"].get("mode", "add")
    per_layer = (
        ", ".join(f"{k}: {v:.4f}" for k, v in meta.get("layer_alpha", {}).items())
        or f"{meta['alpha']:.4f}"
    )
    lo, hi = test["ci95"]
    warnings = "".join(f"> **Warning:** {w}\n\n" for w in meta["metrics"].get("warnings", []))
    llama_cpp = _llama_cpp(meta)
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# Steering vector: {meta["trait"]}

A {meta["method"].upper()} steering vector for **{base}** found by an Optuna TPE search
(study `{meta["study"]["name"]}`, trial {meta["study"]["trial"]} of {meta["study"]["n_trials"]}).
{_what_is_steered(meta, layers, mode, per_layer)}

{warnings}## Metrics ({meta["objective"]["kind"]}, {meta["objective"]["direction"]})

| split | n | baseline | steered | difference (95% CI) |
|---|---|---|---|---|
| validation | {val["n"]} | {_num(val["baseline"])} | {_num(val["steered"])} | |
| test (held out) | {test["n"]} | {_num(test["baseline"])} | {_num(test["steered"])} | \
{test["difference"]:+.4f} [{lo:+.4f}, {hi:+.4f}] |
{_side_metrics(meta)}{_against_prompting(meta)}
## Use it

```python
import hpo
from transformers import AutoModelForCausalLM, AutoTokenizer

bundle = hpo.load_bundle("path/to/this/bundle")
model = AutoModelForCausalLM.from_pretrained("<the base model>")
with bundle.apply(model):          # hooks removed on exit
    ...                            # generate / score as usual
bundle.alpha = 0.5 * bundle.alpha  # change strength; bundle.enabled = False to turn off
```

{_by_hand(meta)}

{llama_cpp}
## Files

- `steering.json`: everything above as data, with sha256 of every file
- `vectors/{meta["trait"]}/steering_vector.safetensors`: the vector(s) at alpha = 1
- `config.yaml`: the winning trial as an experiment config
{"- `control_vector.gguf`: llama.cpp control vector (alpha applied)" if _has_gguf(meta) else ""}
"""


def _against_prompting(meta: dict[str, Any]) -> str:
    """Steered vs the prompted baseline on the test split, and the items the vector made worse."""
    from hpo.export.against_prompting import steerability_line

    test = meta["metrics"]["test"]
    out = ""
    vs = test.get("vs_prompting")
    if vs:
        instruction = vs["instruction"]
        rows = "\n".join(
            f"| {label} | {vs[key]['difference']:+.4f} | "
            f"[{vs[key]['ci95'][0]:+.4f}, {vs[key]['ci95'][1]:+.4f}] |"
            for label, key in (
                ("steered - unsteered", "steered_minus_unsteered"),
                ("steered - prompted", "steered_minus_prompted"),
                ("prompted - unsteered", "prompted_minus_unsteered"),
            )
        )
        on_top = (
            " (the vector was measured on top of it)" if vs["winner_prompting"] != "none" else ""
        )
        out += f"""
## Against prompting

The prompted baseline is the unsteered model asked in words ({instruction["placement"]} \
message): "{instruction["text"]}"{on_top}. Held-out test (n={vs["n"]}): unsteered \
{vs["unsteered"]:.4f}, prompted {vs["prompted"]:.4f}, steered {vs["steered"]:.4f}.

**{vs["verdict"][0].upper() + vs["verdict"][1:]}.**

| paired difference | mean | 95% CI |
|---|---|---|
{rows}
"""
    items = test.get("steerability")
    if items:
        out += f"\nPer item: {steerability_line(items)}.\n"
    return out


def _index_name(meta: dict[str, Any]) -> str:
    """The model-index name: trait, method and the first layer, or the head count."""
    app = meta["application"]
    if app.get("site", "residual") == "heads":
        where = f"heads{sum(len(v) for v in app['heads'].values())}"
    else:
        where = f"layer{meta['layers'][0]}"
    gated = "-gated" if app.get("gate") else ""
    return f"steering-{meta['trait']}-{meta['method']}-{where}{gated}"


def _by_hand(meta: dict[str, Any]) -> str:
    """How to apply the vector file without steering-hpo: tensors, where they act, the gates."""
    app = meta["application"]
    path = f"`vectors/{meta['trait']}/steering_vector.safetensors`"
    modes = (
        "`add`: `h + a * v`; `add_norm_preserving`: `h + a * v` rescaled to `|h|`; "
        "`ablate`: `h - a * (h . u) u` with `u = v / |v|`."
    )
    if app.get("site", "residual") == "heads":
        dim = app["head_dim"]
        if app["head_point"] == "pre_o_proj":
            where = (
                f"`h` is head `H`'s slice `[H * {dim}, (H + 1) * {dim})` of the input of block "
                "`L`'s attention output projection (`o_proj`)"
            )
        else:
            where = (
                f"`v` is the projection `W v'` (no bias) of the `o_proj`-input vector `v'` that "
                f"holds every steered head's `head.<L>.<H>` in its slice `[H * {dim}, "
                f"(H + 1) * {dim})` and zeros elsewhere, and `h` the output of block `L`'s "
                "attention output projection"
            )
        text = (
            f"Without steering-hpo: {path} holds float32 tensors `head.<L>.<H>` (`[{dim}]`, "
            f"one per steered head); with `a = alpha` (steering.json) {where}, at each steered "
            f"position: {modes}"
        )
    else:
        text = (
            f"Without steering-hpo: {path} holds float32 tensors `layer.<L>`; with "
            "`a = layer_alpha[L]` (steering.json) and `h` the output hidden state of decoder "
            f"block `L` at each steered position: {modes}"
        )
    gate = app.get("gate")
    if gate and gate.get("probe", "off") != "off":
        text += (
            " Probe gate: a unit (`<L>` or `<L>.<H>`) is steered at a position only where "
            "`sigmoid(x . gate.<unit>.weight + gate.<unit>.bias)` is "
            f"{'>=' if gate['probe'] == 'present' else '<'} {gate['threshold']:.4f}, with `x` "
            "the unit's activation before its own steering (block `L`'s output, or head `H`'s "
            "slice of `o_proj`'s input; after `o_proj`, `v'` then holds only the open heads)."
        )
    if gate and gate.get("trigger"):
        text += (
            " Trigger gate: only positions whose previous token is one of `trigger.ids` "
            f"(the tokens whose text ends with {gate['trigger']!r})."
        )
    return text


def _what_is_steered(meta: dict[str, Any], layers: str, mode: str, per_layer: str) -> str:
    """One paragraph: the site (block outputs or attention heads), strength, positions, gates."""
    app = meta["application"]
    positions = f"at positions `{app['positions']}`"
    if app.get("site", "residual") == "heads":
        heads = "; ".join(f"layer {k}: heads {v}" for k, v in app["heads"].items())
        n = sum(len(v) for v in app["heads"].values())
        point = "before" if app["head_point"] == "pre_o_proj" else "after"
        text = (
            f"It steers {n} attention heads (CREST-style), each along its own direction, "
            f"{point} the attention output projection, in mode `{mode}` with coefficient "
            f"{meta['alpha']:.4f} ({meta['alpha_scale']} scale), {positions}. Heads: {heads}."
        )
    else:
        text = (
            f"It is applied to the output of decoder block(s) {layers} in mode `{mode}` with\n"
            f"alpha = {meta['alpha']:.4f} ({meta['alpha_scale']} scale; per layer: {per_layer}), "
            f"{positions}."
        )
    gate = app.get("gate")
    if gate:
        parts = []
        if gate.get("trigger"):
            parts.append(f"right after a token ending with {gate['trigger']!r}")
        if gate.get("probe", "off") != "off":
            where = ">=" if gate["probe"] == "present" else "<"
            parts.append(
                f"where the unit's probe gives p(positive) {where} {gate['threshold']:.3f} "
                "(probe weights `gate.*` in the vector file)"
            )
        text += " Gated: a position is steered only " + " and ".join(parts) + "."
    return text


def _side_metrics(meta: dict[str, Any]) -> str:
    """Every named metric on validation and test, and how the winner was chosen."""
    val = meta["metrics"]["validation"].get("metrics", {})
    test = meta["metrics"]["test"].get("metrics", {})
    if not test:
        return ""
    rows = []
    for name, t in test.items():
        v = val.get(name, {})
        ci = f" [{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}]" if "ci95" in t else ""
        diff = f"{t['difference']:+.4f}{ci}" if "difference" in t else ""
        rows.append(
            f"| {name} | {_num(v.get('baseline'))} -> {_num(v.get('steered'))} | "
            f"{t.get('n', '')} | {_num(t['baseline'])} -> {_num(t['steered'])} | {diff} |"
        )
    out = (
        "\n| metric | validation baseline -> steered | test n | test baseline -> steered | "
        "test difference (95% CI) |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    selection = meta.get("selection") or {}
    if selection.get("front") is not None:
        out += (
            f"\nChosen by export rule `{selection['rule']}` from a Pareto front of "
            f"{len(selection['front'])} trials (listed in `steering.json`).\n"
        )
    return out


def _has_gguf(meta: dict[str, Any]) -> bool:
    return bool(meta.get("control_vector", {}).get("file"))


def _llama_cpp(meta: dict[str, Any]) -> str:
    """The llama.cpp section: how to use `control_vector.gguf`, or why there is none."""
    info = meta.get("control_vector")
    if not info:
        return ""
    if not info.get("file"):
        return f"## llama.cpp\n\nNo `control_vector.gguf`: {info['skipped']}.\n"
    note = f"\n> **Note:** {info['note']}.\n" if info.get("note") else ""
    measured = info.get("measured")
    if measured:
        note += _expect_in_llama_cpp(meta, measured)
    return f"""## llama.cpp

`control_vector.gguf` holds `direction.<L>` = alpha x the vector (alpha = {meta["alpha"]:.4f}
already applied) for a `{info["model_hint"]}` model; llama.cpp adds `direction.L` to the output
of block `L` at every position. Use it with a GGUF of the same base model at scale 1.0
(other scales multiply alpha):

```bash
llama-completion -m base-model.gguf --control-vector control_vector.gguf -p "..."
llama-server -m base-model.gguf --control-vector-scaled control_vector.gguf:0.5
```
{note}"""


def _expect_in_llama_cpp(meta: dict[str, Any], m: dict[str, Any]) -> str:
    """What a llama.cpp user gets: the test split scored with the vector at every position."""
    test = meta["metrics"]["test"]
    lo, hi = m["ci95"]
    rows = [
        f"| `{meta['application']['positions']}` (this bundle, measured) | {test['n']} | "
        f"{_num(test['baseline'])} | {_num(test['steered'])} | {test['difference']:+.4f} |",
        f"| `all` (llama.cpp) | {m['n']} | {_num(m['baseline'])} | {_num(m['steered'])} | "
        f"{m['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] |",
    ]
    side = []
    if m.get("fluency"):
        f = m["fluency"]
        side.append(f"perplexity {f['perplexity']:.1f}, distinct-2 {f['distinct2']:.2f}")
    if "kl" in m.get("metrics", {}):
        side.append(f"KL {m['metrics']['kl']['steered']:.4f} nats")
    side.append("within the constraints" if m["feasible"] else "**breaks the constraints**")
    return (
        "\nIn llama.cpp expect the second row (the held-out test split steered at every "
        "position):\n\n| positions | n | baseline | steered | difference (95% CI) |\n"
        "|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nAt every position: {'; '.join(side)}.\n"
    )
