"""The results `hpo optimize` / `hpo export` print once a bundle is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.core.record import format_params


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_results(meta: dict[str, Any], path: Path) -> None:
    val, test = meta["metrics"]["validation"], meta["metrics"]["test"]
    lo, hi = test["ci95"]
    params = format_params(meta["study"]["params"])
    print()
    print(f"study       {meta['study']['name']}: {meta['study']['n_trials']} trials")
    print(
        f"validation  baseline {_fmt(val['baseline'])} -> best {_fmt(val['steered'])}  "
        f"(trial {meta['study']['trial']}: {params})"
    )
    if val.get("prompted") is not None:
        print(f"validation  prompted baseline {_fmt(val['prompted'])} (instruction, alpha = 0)")
    print(
        f"test (n={test['n']})  baseline {_fmt(test['baseline'])} -> steered "
        f"{_fmt(test['steered'])}  difference {test['difference']:+.4f} "
        f"[95% CI {lo:+.4f}, {hi:+.4f}]"
    )
    if test["per_letter"]["steered"]:
        letters = "  ".join(
            f"{k}: {test['per_letter']['baseline'][k]:.3f}->{v:.3f}"
            for k, v in test["per_letter"]["steered"].items()
        )
        print(f"per letter  {letters}")
    acc = test.get("accuracy")
    if acc:
        print(
            f"accuracy    baseline {acc['baseline']:.4f} -> steered {acc['steered']:.4f}  "
            f"difference {acc['steered'] - acc['baseline']:+.4f} "
            f"[95% CI {acc['ci95'][0]:+.4f}, {acc['ci95'][1]:+.4f}]"
        )
    unparsed = test.get("unparsed")
    if unparsed and (any(unparsed["baseline"].values()) or any(unparsed["steered"].values())):
        shown = ", ".join(
            f"{k} {unparsed['baseline'].get(k, 0)} -> {unparsed['steered'][k]}"
            for k in unparsed["steered"]
        )
        print(f"unreadable  {shown} (answers scored as wrong)")
    fluency = test.get("fluency")
    if fluency:
        s, b = fluency["steered"], fluency["baseline"]
        print(
            f"fluency     perplexity {b['perplexity']:.1f} -> {s['perplexity']:.1f}, "
            f"distinct-2 {b['distinct2']:.2f} -> {s['distinct2']:.2f} "
            f"({'feasible' if fluency['feasible'] else 'INFEASIBLE'})"
        )
    side = {k: v for k, v in test.get("metrics", {}).items() if k != "score"}
    for name, m in side.items():
        ci = f" [95% CI {m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]" if "ci95" in m else ""
        base = val["metrics"].get(name, {})
        print(
            f"{name:<11} validation {_fmt(base.get('baseline'))} -> {_fmt(base.get('steered'))}"
            f"; test {_fmt(m['baseline'])} -> {_fmt(m['steered'])}{ci}"
        )
    vs = test.get("vs_prompting")
    if vs:
        p_lo, p_hi = vs["prompted_minus_unsteered"]["ci95"]
        print(
            f"prompted    test {_fmt(vs['unsteered'])} -> {_fmt(vs['prompted'])} with the "
            f"instruction alone  difference {vs['prompted_minus_unsteered']['difference']:+.4f} "
            f"[95% CI {p_lo:+.4f}, {p_hi:+.4f}]"
        )
        print(f"vs prompt   {vs['verdict']}")
    if test.get("steerability"):
        from hpo.export.against_prompting import steerability_line

        print(f"per item    {steerability_line(test['steerability'])}")
    everywhere = (meta.get("control_vector") or {}).get("measured")
    if everywhere:
        print(f"llama.cpp   {llama_cpp_line(everywhere)}")
    selection = meta.get("selection", {})
    if "front" in selection:
        print(
            f"pareto      {len(selection['front'])} trials on the front "
            f"({', '.join(m['name'] for m in selection['metrics'])}); rule {selection['rule']}"
        )
    for sample in test.get("samples", []):
        print(f"\nprompt      {sample['prompt']}")
        print(f"  unsteered {sample['unsteered']}")
        print(f"  steered   {sample['steered']}")
        if "reference" in sample:
            u, s = ("right" if sample["correct"][k] else "wrong" for k in ("unsteered", "steered"))
            gold = " ".join(str(sample["reference"]).split())[-60:]
            print(f"  gold      ...{gold}  (unsteered {u}, steered {s})")
    if test.get("samples"):
        print()
    for warning in meta["metrics"]["warnings"]:
        print(f"warning     {warning}")
    print(f"bundle      {path}")


def llama_cpp_line(m: dict[str, Any]) -> str:
    """One line: the test split scored at every position, as the control vector applies."""
    lo, hi = m["ci95"]
    line = (
        f"every position (control_vector.gguf): test {_fmt(m['baseline'])} -> "
        f"{_fmt(m['steered'])}  difference {m['difference']:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
    )
    fluency = m.get("fluency")
    if fluency:
        line += f"; perplexity {fluency['perplexity']:.1f}, distinct-2 {fluency['distinct2']:.2f}"
    kl = m.get("metrics", {}).get("kl")
    if kl:
        line += f"; kl {kl['steered']:.4f}"
    return line + ("" if m["feasible"] else " (INFEASIBLE)")
