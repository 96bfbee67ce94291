"""Head-site steering (seed 003) and gates on tiny random models of every family.

Every family here has an attention output projection (`o_proj`; `dense` in Phi and GPT-NeoX,
`c_proj` in GPT-2). A spy hook registered after the steering hooks sees what the projection (or
the block) really received, so the tests compare exact values, position by position.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hpo import UserError
from hpo.model.blocks import find_blocks
from hpo.model.decoding import generate_ids
from hpo.steering.application import Application
from hpo.steering.gates import Gate, TriggerState
from hpo.steering.heads import head_shape, out_projection
from hpo.steering.hooks import steer
from tests.hpo_tests.model_tests.test_architectures import (
    FAMILIES,
    HIDDEN,
    PAD,
    PROMPTS,
    _build,
    _hook_count,
)

LAYER = 1
HEAD = 2
POINTS = ("pre_o_proj", "post_o_proj")
MODES = ("add", "add_norm_preserving")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    model, _path = _build(request.param)
    return request.param, model


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 17, 33, 2, 9, 41, 7, 8]])


def _head_vector(model: nn.Module, head: int = HEAD, scale: float = 3.0) -> torch.Tensor:
    n_heads, head_dim = head_shape(model, find_blocks(model))
    torch.manual_seed(1)
    v = torch.zeros(n_heads, head_dim)
    v[head] = torch.randn(head_dim) * scale
    return v.flatten()


def _spy_input(module: nn.Module, store: list[torch.Tensor]) -> Any:
    return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach()))


def _spy_output(module: nn.Module, store: list[torch.Tensor]) -> Any:
    def hook(_m: nn.Module, _a: Any, out: Any) -> None:
        store.append((out[0] if isinstance(out, tuple) else out).detach())

    return module.register_forward_hook(hook)


def _steer_heads(model: nn.Module, vector: torch.Tensor, alpha: float, **kw: Any) -> Any:
    _n, head_dim = head_shape(model, find_blocks(model))
    kw.setdefault("heads", {LAYER: (HEAD,)})
    app = Application(alpha=alpha, site="heads", head_dim=head_dim, **kw)
    return steer(model, find_blocks(model), {LAYER: vector}, app)


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("mode", MODES)
def test_zero_coefficient_is_bit_identical_to_unsteered(
    family: tuple[str, nn.Module], point: str, mode: str
) -> None:
    _name, model = family
    ids = _ids()
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with _steer_heads(model, _head_vector(model), 0.0, mode=mode, head_point=point):
            steered = model(input_ids=ids).logits
    assert torch.equal(plain, steered)
    assert _hook_count(model) == 0


def test_steering_one_head_changes_only_that_heads_slice_before_o_proj(
    family: tuple[str, nn.Module],
) -> None:
    _name, model = family
    n_heads, head_dim = head_shape(model, find_blocks(model))
    proj = out_projection(find_blocks(model)[LAYER])
    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    with torch.inference_mode():
        spy = _spy_input(proj, plain)
        model(input_ids=_ids())
        spy.remove()
        with _steer_heads(model, _head_vector(model), 1.0, head_point="pre_o_proj"):
            spy = _spy_input(proj, steered)  # after the steering hook: sees what o_proj gets
            model(input_ids=_ids())
            spy.remove()
    before = plain[0].unflatten(-1, (n_heads, head_dim))
    after = steered[0].unflatten(-1, (n_heads, head_dim))
    others = [h for h in range(n_heads) if h != HEAD]
    assert torch.equal(before[:, :, others], after[:, :, others])
    assert torch.allclose(
        after[:, :, HEAD] - before[:, :, HEAD],
        _head_vector(model)[HEAD * head_dim : (HEAD + 1) * head_dim].expand_as(before[:, :, HEAD]),
        atol=1e-5,
    )


def test_norm_preserving_keeps_each_head_slice_norm_before_o_proj(
    family: tuple[str, nn.Module],
) -> None:
    _name, model = family
    n_heads, head_dim = head_shape(model, find_blocks(model))
    proj = out_projection(find_blocks(model)[LAYER])
    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    vector = _head_vector(model, scale=5.0)
    with torch.inference_mode():
        spy = _spy_input(proj, plain)
        model(input_ids=_ids())
        spy.remove()
        with _steer_heads(model, vector, 2.0, mode="add_norm_preserving"):
            spy = _spy_input(proj, steered)
            model(input_ids=_ids())
            spy.remove()
    before = plain[0].unflatten(-1, (n_heads, head_dim))
    after = steered[0].unflatten(-1, (n_heads, head_dim))
    assert not torch.allclose(before[:, :, HEAD], after[:, :, HEAD])  # it did turn
    torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_norm_preserving_after_o_proj_keeps_the_outputs_norm(
    family: tuple[str, nn.Module],
) -> None:
    _name, model = family
    proj = out_projection(find_blocks(model)[LAYER])
    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    with torch.inference_mode():
        spy = _spy_output(proj, plain)
        model(input_ids=_ids())
        spy.remove()
        vector = _head_vector(model, scale=5.0)
        with _steer_heads(
            model, vector, 2.0, mode="add_norm_preserving", head_point="post_o_proj"
        ):
            spy = _spy_output(proj, steered)
            model(input_ids=_ids())
            spy.remove()
    assert not torch.allclose(plain[0], steered[0])
    torch.testing.assert_close(
        steered[0].norm(dim=-1), plain[0].norm(dim=-1), rtol=1e-5, atol=1e-6
    )


def test_post_o_proj_adds_the_projected_head_vector(family: tuple[str, nn.Module]) -> None:
    _name, model = family
    proj = out_projection(find_blocks(model)[LAYER])
    vector = _head_vector(model)
    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    with torch.inference_mode():
        spy = _spy_output(proj, plain)
        model(input_ids=_ids())
        spy.remove()
        with _steer_heads(model, vector, 0.5, head_point="post_o_proj"):
            spy = _spy_output(proj, steered)
            model(input_ids=_ids())
            spy.remove()
        expected = 0.5 * (proj(vector) - proj(torch.zeros_like(vector)))
    torch.testing.assert_close(
        steered[0] - plain[0], expected.expand_as(plain[0]), atol=1e-5, rtol=1e-4
    )


def _probe_gate(key: Any, acts: torch.Tensor) -> Gate:
    """A random probe on `key` whose threshold splits these `[1, T, D]` activations in half."""
    torch.manual_seed(3)
    weight = torch.randn(acts.shape[-1])
    logits = (acts.float() @ weight).flatten().sort().values
    middle = len(logits) // 2
    bias = -float(logits[middle - 1] + logits[middle]) / 2
    return Gate(probe="present", threshold=0.5, probes={key: (weight, bias)})


@pytest.mark.parametrize("point", POINTS)
def test_gated_head_steering_leaves_ungated_positions_exactly_unchanged(
    family: tuple[str, nn.Module], point: str
) -> None:
    _name, model = family
    n_heads, head_dim = head_shape(model, find_blocks(model))
    proj = out_projection(find_blocks(model)[LAYER])
    spy_of = _spy_input if point == "pre_o_proj" else _spy_output
    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    with torch.inference_mode():
        spies = [spy_of(proj, plain), _spy_input(proj, inputs)]
        model(input_ids=_ids())
        for s in spies:
            s.remove()
        head_acts = inputs[0].unflatten(-1, (n_heads, head_dim))[:, :, HEAD]
        gate = _probe_gate((LAYER, HEAD), head_acts)
        with _steer_heads(model, _head_vector(model), 1.0, head_point=point, gate=gate):
            spy = spy_of(proj, steered)
            model(input_ids=_ids())
            spy.remove()
    opened = gate.probe_open((LAYER, HEAD), head_acts)  # [1, T]
    assert opened.any() and not opened.all(), "the probe should split the positions"
    changed = (steered[0] != plain[0]).any(dim=-1)
    assert torch.equal(changed, opened)


def test_gated_residual_steering_leaves_ungated_positions_exactly_unchanged(
    family: tuple[str, nn.Module],
) -> None:
    _name, model = family
    blocks = find_blocks(model)
    hidden = HIDDEN
    torch.manual_seed(4)
    vector = torch.randn(hidden)
    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    with torch.inference_mode():
        spy = _spy_output(blocks[LAYER], plain)
        model(input_ids=_ids())
        spy.remove()
        gate = _probe_gate(LAYER, plain[0])
        with steer(model, blocks, {LAYER: vector}, Application(alpha=1.0, gate=gate)):
            spy = _spy_output(blocks[LAYER], steered)
            model(input_ids=_ids())
            spy.remove()
    opened = gate.probe_open(LAYER, plain[0])
    assert opened.any() and not opened.all()
    assert torch.equal((steered[0] != plain[0]).any(dim=-1), opened)


def test_trigger_fires_only_right_after_a_trigger_token() -> None:
    ids = torch.tensor([[0, 0, 5, 9, 5, 7], [3, 5, 5, 1, 2, 9]])
    mask = TriggerState().mask(ids, 0, torch.tensor([5]))
    expected = torch.tensor(
        [[False, False, False, True, False, True], [False, False, True, True, False, False]]
    )
    assert torch.equal(mask, expected)
    state = TriggerState()
    first = state.mask(ids[:, :4], 0, torch.tensor([5]))
    rest = torch.cat([state.mask(ids[:, i : i + 1], i, torch.tensor([5])) for i in (4, 5)], 1)
    assert torch.equal(torch.cat([first, rest], dim=1), expected)
    with pytest.raises(UserError, match="has not seen"):
        TriggerState().mask(ids[:, :1], 3, torch.tensor([5]))


@pytest.mark.parametrize("site", ["residual", "heads"])
def test_cached_and_uncached_generation_agree_with_a_gate_on(
    family: tuple[str, nn.Module], site: str
) -> None:
    _name, model = family
    blocks = find_blocks(model)
    prompts = [list(p) for p in PROMPTS]
    plain = generate_ids(model, PAD, prompts, 8)
    # Trigger after the most common tokens of the unsteered continuations, AND a probe gate.
    common = torch.tensor([t for row in plain for t in row]).unique()[:6]
    keys: list[Any]
    if site == "heads":
        _n_heads, head_dim = head_shape(model, find_blocks(model))
        vector, dim, keys = _head_vector(model, scale=20.0), head_dim, [(LAYER, HEAD)]
        extra: dict[str, Any] = {"site": "heads", "heads": {LAYER: (HEAD,)}, "head_dim": head_dim}
    else:
        dim = HIDDEN
        torch.manual_seed(5)
        vector, keys, extra = torch.randn(dim) * 100.0, [LAYER], {}
    torch.manual_seed(6)
    probes = {k: (torch.randn(dim) * 1e-3, 0.0) for k in keys}  # open about half the time
    outputs = []
    for side in ("present", "absent"):  # between them, every triggered position is open once
        gate = Gate(trigger="t", trigger_ids=common, probe=side, threshold=0.5, probes=probes)

        def run(use_cache: bool, gate: Gate = gate) -> list[list[int]]:
            app = Application(alpha=1.0, positions="generated", gate=gate, **extra)
            with steer(model, blocks, {LAYER: vector}, app) as h:
                return generate_ids(model, PAD, prompts, 8, h, use_cache=use_cache)

        cached = run(True)
        assert cached == run(False)
        outputs.append(cached)
    assert any(out != plain for out in outputs), "the gated steering should change some text"
    assert _hook_count(model) == 0


def test_a_family_without_an_output_projection_is_refused_naming_its_children() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(4, 12)
            self.mix = nn.Linear(4, 4)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = Attention()

    with pytest.raises(UserError, match=r"children are: qkv \(Linear\), mix \(Linear\)"):
        out_projection(Block())
    with pytest.raises(UserError, match="children are: mlp"):
        out_projection(nn.ModuleDict({"mlp": nn.Linear(2, 2)}))
