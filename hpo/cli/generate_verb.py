"""`hpo generate`: a bundle's unsteered vs steered completions, and replaying its samples."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hpo.core.config import CHARS_PER_TOKEN, to_generate_config
from hpo.core.errors import UserError


def _check_replayable(path: str, recorded: list[dict[str, Any]]) -> None:
    """Every recorded sample replays (a sample without its text and ids is not skipped)."""
    from hpo.export.bundle import REPLAY_KEYS

    if not recorded:
        raise UserError(f"bundle {path} records no generated samples to replay")
    lacking = [i for i, s in enumerate(recorded) if not all(k in s for k in REPLAY_KEYS)]
    if lacking:
        raise UserError(
            f"bundle {path}: {len(lacking)} of {len(recorded)} recorded samples (#"
            f"{', #'.join(map(str, lacking[:5]))}) lack {'/'.join(REPLAY_KEYS)}: not replayable"
        )


def generate(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo generate`: a bundle's unsteered vs steered completions, side by side.

    Each prompt is generated alone (batch of one, no padding): what `model.generate` gives a
    user on that prompt. `replay=true` regenerates the bundle's recorded samples with their exact
    prompt text, length and stop strings, and checks them token for token (exit 1 on a mismatch).
    """
    from hpo.core.progress import progress
    from hpo.export.bundle import load_bundle
    from hpo.model.decoding import complete_each
    from hpo.model.loading import load_model

    gen = to_generate_config(raw)
    if gen.replay and gen.alpha is not None:
        raise UserError(
            "replay=true checks the recorded samples at the bundle's alpha; "
            f"drop alpha={gen.alpha}"
        )
    if not (gen.replay or gen.prompt or gen.prompts_file):
        raise UserError('generate needs prompt="...", prompts_file=PATH or replay=true, got none')
    bundle = load_bundle(gen.bundle)
    samples = bundle.samples() if gen.replay else []
    if gen.replay:
        _check_replayable(gen.bundle, bundle.recorded_samples())
    prompts = [str(s["prompt"]) for s in samples] or ([gen.prompt] if gen.prompt else [])
    if gen.prompts_file and not gen.replay:
        path = Path(gen.prompts_file).expanduser()
        if not path.is_file():
            raise UserError(f"prompts_file must be an existing file, got {gen.prompts_file!r}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"prompts_file {gen.prompts_file!r} must be UTF-8, got byte "
                f"{e.object[e.start]:#x} at offset {e.start}"
            ) from e
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError('generate needs prompt="...", prompts_file=PATH or replay=true, got none')
    longest = max(len(p) for p in prompts)
    if longest > gen.max_prompt_tokens * CHARS_PER_TOKEN:
        raise UserError(
            f"a prompt ({longest} characters) cannot fit max_prompt_tokens="
            f"{gen.max_prompt_tokens} tokens; long prompts are refused, not truncated"
        )
    if gen.alpha is not None:
        bundle.alpha = gen.alpha
    loaded = load_model(bundle.model_config(gen.device))
    tok = loaded.tokenizer
    if samples:
        texts = [str(s["text"]) for s in samples]
        budget, stop = bundle.generation["max_new_tokens"], bundle.generation["stop"] or None
    else:
        texts = [bundle.prompt(tok, p, gen.chat_template) for p in prompts]
        budget, stop = gen.max_new_tokens, None
    ids = [tok.encode(t) for t in texts]
    if max(len(x) for x in ids) > gen.max_prompt_tokens:
        raise UserError(
            f"a prompt has {max(len(x) for x in ids)} tokens, more than max_prompt_tokens="
            f"{gen.max_prompt_tokens}; long prompts are refused, not truncated"
        )
    if bundle.instruction is not None:
        print(
            f"instruction the bundle was measured with ({bundle.instruction.placement} message), "
            f"in every prompt: {bundle.instruction.text}"
        )
    plain: list[tuple[list[int], str]] = []
    steered: list[tuple[list[int], str]] = []
    for which in progress(("unsteered", "steered"), "generating", unit="pass"):
        if which == "unsteered":
            plain = complete_each(loaded.model, tok, ids, budget, stop_strings=stop)
            continue
        with bundle.apply(loaded.model) as handle:
            steered = complete_each(loaded.model, tok, ids, budget, handle, stop)
    for prompt, (_, a), (_, b) in zip(prompts, plain, steered, strict=True):
        print(f"=== prompt: {prompt}")
        print(f"--- unsteered:\n{a.strip()}")
        print(f"--- steered (alpha={bundle.alpha:.3f}, layers {sorted(bundle.vectors)}):")
        print(b.strip())
    if not samples:
        return 0
    same_u = sum(s["unsteered_ids"] == u for s, (u, _) in zip(samples, plain, strict=True))
    same_s = sum(s["steered_ids"] == v for s, (v, _) in zip(samples, steered, strict=True))
    n = len(samples)
    print(
        f"replay      {same_s}/{n} steered and {same_u}/{n} unsteered samples identical to the "
        "bundle's record, token for token"
    )
    if same_s == same_u == n:
        return 0
    print(
        "replay differs from the bundle's record: another model copy, dtype, device or library "
        "version than the export's (see steering.json `environment`)",
        file=sys.stderr,
    )
    return 1
