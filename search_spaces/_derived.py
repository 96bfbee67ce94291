"""Derived trial params: arithmetic expressions in the YAML, parsed once into sympy, never eval'd.

`derived: {layer_alpha: "alpha / window"}` declares a param computed from the sampled ones. The
text is parsed with Python's `ast` (no evaluation), every node is checked against a small
whitelist (numbers, the declared symbols, + - * / ** and a few functions), and the tree is turned
into a sympy expression by hand, so nothing the user writes is ever executed. Each trial then
substitutes its values and records the result.

Work is bounded: an expression is at most `MAX_TEXT` characters, a constant exponent at most
`MAX_EXPONENT` in magnitude and a constant power must fit a float, and every evaluation first
runs in plain floats (`_approx`), refusing an overflow, before sympy computes the exact value.
So `10**10**10**10` is refused at once instead of computing forever.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from hpo.core.errors import UserError

# The numbers a derived expression may use: the sampled params (window = number of steered
# layers, also for an explicit layer set).
SYMBOLS = ("alpha", "layer", "window")
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": sympy.sqrt,
    "log": sympy.log,
    "exp": sympy.exp,
    "abs": sympy.Abs,
    "min": sympy.Min,
    "max": sympy.Max,
    "floor": sympy.floor,
    "ceil": sympy.ceiling,
}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# Bounds on the work one expression may ask for (see the module docstring).
MAX_TEXT = 200
MAX_EXPONENT = 64
# The same functions in plain floats, for the bounded first evaluation.
_FLOAT_FUNCTIONS: dict[Any, Callable[..., float]] = {
    sympy.exp: math.exp,
    sympy.log: math.log,
    sympy.Abs: abs,
    sympy.Min: min,
    sympy.Max: max,
    sympy.floor: math.floor,
    sympy.ceiling: math.ceil,
}


def _power(base: Any, exponent: Any, where: str, node: ast.BinOp) -> Any:
    """`base ** exponent`, refusing a constant exponent or constant result past the bounds."""
    if exponent.is_Number and abs(float(exponent)) > MAX_EXPONENT:
        raise UserError(
            f"{where}: exponents must be numbers of magnitude <= {MAX_EXPONENT} or expressions "
            f"of the params, got {ast.unparse(node.right)!r}"
        )
    if base.is_Number and exponent.is_Number:
        try:
            math.pow(abs(float(base)), float(exponent))
        except (OverflowError, ValueError, ZeroDivisionError) as e:
            raise UserError(
                f"{where}: a constant power must fit a float, got {ast.unparse(node)!r}"
            ) from e
    return base**exponent


def _approx(expr: Any, values: Mapping[str, float]) -> float:
    """`expr` in plain floats (bounded time); raises OverflowError, ValueError, TypeError."""
    if expr.is_Symbol:
        return float(values[expr.name])
    if expr.is_Number or isinstance(expr, sympy.NumberSymbol):
        return float(expr)
    args = [_approx(a, values) for a in expr.args]
    if expr.is_Add:
        out = math.fsum(args)
    elif expr.is_Mul:
        out = math.prod(args)
    elif expr.is_Pow:
        out = math.pow(args[0], args[1])
    elif expr.func in _FLOAT_FUNCTIONS:
        out = float(_FLOAT_FUNCTIONS[expr.func](*args))
    else:
        raise TypeError(f"no float form for {expr.func}")
    if not math.isfinite(out):
        raise OverflowError(f"{expr} is not finite")
    return out


def _convert(node: ast.AST, where: str, symbols: Mapping[str, sympy.Symbol]) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where} may only use finite numbers, got {ast.unparse(node)!r}")
        return sympy.Integer(value) if isinstance(value, int) else sympy.Float(value)
    if isinstance(node, ast.Name):
        if node.id not in symbols:
            raise UserError(
                f"{where} may only use the symbols {sorted(symbols)}, got unknown name {node.id!r}"
            )
        return symbols[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base = _convert(node.left, where, symbols)
        return _power(base, _convert(node.right, where, symbols), where, node)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _convert(node.left, where, symbols)
        return _BINARY[type(node.op)](left, _convert(node.right, where, symbols))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_convert(node.operand, where, symbols))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
    ):
        return FUNCTIONS[node.func.id](*(_convert(a, where, symbols) for a in node.args))
    raise UserError(
        f"{where} may use numbers, {list(symbols)}, + - * / ** and {sorted(FUNCTIONS)}(...), "
        f"got {ast.unparse(node)!r}"
    )


@dataclass(frozen=True)
class Derived:
    """One derived param: its name, the source text, and the parsed sympy expression."""

    name: str
    text: str
    expr: sympy.Expr

    @property
    def symbols(self) -> set[str]:
        """Names of the params the expression reads."""
        return {s.name for s in self.expr.free_symbols}

    def evaluate(self, values: Mapping[str, float]) -> float | None:
        """The value for one trial, or `None` when a symbol it reads is absent (conditional).

        Raises:
            UserError: the value is not a finite real number (an overflow, a complex number
                from sqrt or log of a negative value, a division by zero).
        """
        if not self.symbols <= set(values):
            return None
        shown = {k: values[k] for k in sorted(self.symbols)}
        rule = f"search_space.derived.{self.name} = {self.text!r} must be a finite real number"
        try:
            _approx(self.expr, values)  # bounded: refuses an overflow before sympy's exact work
            subs = {sympy.Symbol(k): sympy.sympify(values[k]) for k in self.symbols}
            value = float(self.expr.xreplace(subs))
        except (OverflowError, ValueError, TypeError, ZeroDivisionError) as e:
            raise UserError(f"{rule}, got {e} for {shown}") from e
        if not math.isfinite(value):
            raise UserError(f"{rule}, got {value} for {shown}")
        return value


def parse_derived(name: str, text: str, symbols: tuple[str, ...] = SYMBOLS) -> Derived:
    """Parse one expression, allowing only `symbols`, numbers, arithmetic and `FUNCTIONS`.

    Raises:
        UserError: bad syntax, an unknown symbol or function, or a name that shadows a param.
    """
    where = f"search_space.derived.{name}"
    if not name.isidentifier() or name in symbols:
        raise UserError(
            f"{where}: a derived param needs a new identifier for a name, not one of "
            f"{list(symbols)}, got {name!r}"
        )
    if len(str(text)) > MAX_TEXT:
        raise UserError(
            f"{where} must be at most {MAX_TEXT} characters, got {len(str(text))}: "
            f"{str(text)[:40]!r}..."
        )
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as e:
        raise UserError(f"{where} is not a valid expression ({e.msg}), got {text!r}") from e
    except (ValueError, RecursionError, MemoryError) as e:
        raise UserError(f"{where} is not a valid expression ({e}), got {text!r}") from e
    table = {s: sympy.Symbol(s) for s in symbols}
    expr = sympy.sympify(_convert(tree.body, where, table))
    return Derived(name, str(text), expr)


def layer_scale(derived: Derived) -> sympy.Expr:
    """`layer_alpha / alpha` as an expression free of alpha.

    Raises:
        UserError: `layer_alpha` is not alpha times an expression of the other symbols, which
            alpha = 0 (the unsteered baseline) and a bundle's live `alpha` knob both rely on.
    """
    alpha = sympy.Symbol("alpha")
    scale = sympy.simplify(derived.expr / alpha)
    if alpha in scale.free_symbols or alpha not in derived.expr.free_symbols:
        raise UserError(
            f"search_space.derived.{derived.name} must be alpha times an expression of "
            f"{[s for s in SYMBOLS if s != 'alpha']} (so alpha = 0 stays unsteered), "
            f"got {derived.text!r}"
        )
    return scale
