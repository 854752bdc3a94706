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


# Each fact in one place: what the package's source promises of itself.
MOST_MODULE_LINES = 400
RETRY_HELPERS = {"core/retry.py", "core/pacing.py", "core/outage.py"}
READS_THE_ENVIRONMENT = {"settings.py", "local/stack.py"}


def _package_modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text()) for p in _modules()}


def _module_name(relative: str) -> str:
    name = "smartgo_analytics." + relative.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def test_no_module_is_over_four_hundred_lines():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert {name: n for name, n in lengths.items() if n > MOST_MODULE_LINES} == {}


def _places(exempt: set[str], found) -> list[str]:
    """`module:line` of each node `found(node)` holds, in the modules not exempt."""
    return [
        f"{name}:{node.lineno}"
        for name, tree in _package_modules().items()
        if name not in exempt
        for node in ast.walk(tree)
        if found(node)
    ]


def _sleeps(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    function = node.func
    return (isinstance(function, ast.Attribute) and function.attr == "sleep") or (
        isinstance(function, ast.Name) and function.id == "sleep"
    )


def _reads_the_environment(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv", "putenv")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def test_only_the_retry_pacing_and_outage_helpers_sleep():
    assert _places(RETRY_HELPERS, _sleeps) == []


def test_only_settings_and_the_local_stack_read_the_environment():
    assert _places(READS_THE_ENVIRONMENT, _reads_the_environment) == []


def _imports_of(tree: ast.Module) -> set[str]:
    """The package's own modules a module imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("smartgo_analytics")}


def test_the_package_has_no_import_cycle():
    modules = _package_modules()
    names = {_module_name(name) for name in modules}
    graph = {
        _module_name(name): (_imports_of(tree) & names) - {_module_name(name)}
        for name, tree in modules.items()
    }
    cycles = set()
    for start in graph:
        stack = [(start, (start,))]
        while stack:
            module, path = stack.pop()
            for imported in graph[module]:
                if imported == start:
                    cycles.add(tuple(sorted(path)))
                elif imported not in path:
                    stack.append((imported, (*path, imported)))
    assert cycles == set()


def test_every_import_inside_a_function_says_why():
    """A function-level import saves start-up time (the commands, the page, a worker) and says
    so in a comment on its line or just above its group of imports."""
    silent = []
    for name, tree in _package_modules().items():
        lines = (PACKAGE / name).read_text().splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            imports = sorted(
                (n for n in ast.walk(function) if isinstance(n, ast.Import | ast.ImportFrom)),
                key=lambda n: n.lineno,
            )
            ends = {n.end_lineno for n in imports}
            for node in imports:
                above = node.lineno - 2
                while above >= 0 and not lines[above].strip():
                    above -= 1
                if above + 1 in ends:  # one of a group: the group's first says why
                    continue
                if not ("#" in lines[node.lineno - 1] or lines[above].lstrip().startswith("#")):
                    silent.append(f"{name}:{node.lineno}")
    assert silent == [], silent


def test_the_plain_functions_import_no_dagster_and_nothing_of_a_layer_above():
    """`core/` is plain data and functions: no Dagster, and none of the resources, steps, assets
    or other packages built on it."""
    above = []
    for name, tree in _package_modules().items():
        if not name.startswith("core/"):
            continue
        for imported in (
            _imports_of(tree)
            | {
                alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            }
            | {
                node.module
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
            }
        ):
            own = imported.startswith("smartgo_analytics.") and not imported.startswith(
                ("smartgo_analytics.core", "smartgo_analytics.layout")
            )
            if imported.split(".")[0] == "dagster" or own:
                above.append(f"{name}: {imported}")
    assert above == []


def test_no_resource_imports_the_local_stack():
    """One set of resources for every deployment: the local one is given the stack as data."""
    local = [
        f"{name}: {imported}"
        for name, tree in _package_modules().items()
        if name.startswith("resources/")
        for imported in _imports_of(tree)
        if imported.startswith("smartgo_analytics.local")
    ]
    assert local == []


def test_every_benchmark_imports_and_none_imports_a_test_module():
    """`make bench` is not run by CI: a benchmark that cannot even be imported (a renamed helper)
    fails here. Benchmarks share smartgo_analytics_tests' support modules, never its tests."""
    import importlib
    import pathlib

    from benchmarks.__main__ import BENCHMARKS

    assert len(BENCHMARKS) >= 17 and all(callable(b) for b in BENCHMARKS)
    for path in pathlib.Path("benchmarks").glob("*.py"):
        # a code location a benchmark's dagster loads; a comparison with a library not installed
        if path.stem not in ("quicksight_defs", "libvips"):
            importlib.import_module(f"benchmarks.{path.stem}")
        text = path.read_text()
        assert "smartgo_analytics_tests.test_" not in text, path
        assert "smartgo_analytics_tests.conftest" not in text, path
