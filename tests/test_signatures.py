"""No public function of the package takes more than 7 parameters: longer signatures become typed options
objects (BuildOptions, TrainOptions, InferOptions, PredictOptions, RuntimeOptions, Shard...).

A click command is exempt: its signature is its list of command-line options, each parsed by click and
handed on as one options object to the API function it wraps (docs/design.md §8).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ich3d"
MAX_PARAMETERS = 7


def _is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("command" in ast.unparse(d) or ast.unparse(d).startswith("click.") for d in node.decorator_list)


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = node.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return [name for name in names if name not in ("self", "cls")]


def _long_signatures() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            parameters = _parameters(node)
            if len(parameters) > MAX_PARAMETERS and not _is_click_command(node):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}({', '.join(parameters)})")
    return found


def test_no_public_function_takes_more_than_seven_parameters() -> None:
    long = _long_signatures()
    assert not long, "use a typed options object instead of:\n" + "\n".join(long)


def test_the_check_sees_long_signatures(tmp_path: Path) -> None:
    source = "def f(a, b, c, d, e, f, g, h):\n    pass\n\n@main.command()\ndef cmd(a, b, c, d, e, f, g, h):\n    pass\n"
    tree = ast.parse(source)
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert [len(_parameters(node)) for node in functions] == [8, 8]
    assert [_is_click_command(node) for node in functions] == [False, True]
