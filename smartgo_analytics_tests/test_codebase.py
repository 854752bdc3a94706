"""The layout's promises, read from the source: `assets/` holds assets and their policies, an
asset body reads, calls, writes and reports in a screenful, and no private Dagster name is used."""

import ast
from pathlib import Path

import smartgo_analytics

PACKAGE = Path(smartgo_analytics.__file__).parent
ASSET_DECORATORS = {"asset", "multi_asset"}
MOST_BODY_LINES = 40


def _modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _decorator_names(node: ast.FunctionDef) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _asset_bodies() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in _modules("assets"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and _decorator_names(node) & ASSET_DECORATORS:
                found.append((f"{path.name}:{node.name}", node))
    return found


def _body_lines(node: ast.FunctionDef) -> int:
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring is the UI's description, not the body
    return body[-1].end_lineno - body[0].lineno + 1


def test_every_asset_body_is_at_most_forty_lines_without_a_closure():
    bodies = _asset_bodies()
    assert len(bodies) >= 7  # the six pricing assets' four bodies, and the QuickSight ones
    too_long = {name: _body_lines(node) for name, node in bodies}
    assert {n: lines for n, lines in too_long.items() if lines > MOST_BODY_LINES} == {}
    closures = [
        name
        for name, node in bodies
        for inner in ast.walk(node)
        if inner is not node and isinstance(inner, (ast.FunctionDef, ast.Lambda))
    ]
    assert closures == []


def test_assets_modules_define_only_assets_their_factories_and_policies():
    others = []
    for path in _modules("assets"):
        if path.name == "policies.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                others.append(f"{path.name}:{node.name}")
            elif isinstance(node, ast.FunctionDef):
                is_asset = bool(_decorator_names(node) & ASSET_DECORATORS)
                makes_assets = ast.unparse(node.returns or ast.Constant(None)) == "AssetsDefinition"
                if not (is_asset or makes_assets):
                    others.append(f"{path.name}:{node.name}")
    assert others == []


def test_no_private_dagster_name_is_imported():
    private = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            private += [f"{path.name}: {n}" for n in names if n.startswith("dagster._")]
    assert private == []
