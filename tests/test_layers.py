"""The package imports only downward: each layer may import the layers listed before it.

Every ``import``/``from ... import`` in src/fedhello is read (module level or inside a
function alike), so a lazy import that breaks a cycle fails here too.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedhello"

# bottom first; modules of one layer may not import each other across packages
LAYERS = [
    {"errors", "metrics", "console", "resources", "strategy_options"},
    {"tasks"},  # the Task objects compute their metrics (fedhello.metrics)
    {"config"},
    {"data", "model"},
    {"allocation"},
    {"federation"},
    {"run"},
    {"report"},
    {"flower", "demo", "bench"},
    {"cli", "__main__"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"fedhello.{top} is in no layer of tests/test_layers.py: place it")


def imports(path: Path):
    mod = "fedhello." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    mod = mod.removesuffix(".__init__")
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("fedhello.") and name != mod:
                yield mod, name, node.lineno


def test_every_import_points_down_the_layers():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        for mod, target, line in imports(path):
            if mod.count(".") == 0:
                continue  # the package's own __init__
            a, b = layer_of(mod), layer_of(target)
            same_package = mod.split(".")[1] == target.split(".")[1]
            if b > a or (b == a and not same_package):
                upward.append(f"{mod}:{line} -> {target}")
    assert upward == [], "imports that do not point down the layers:\n" + "\n".join(upward)


def test_the_layer_table_knows_every_module():
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.rglob("*.py")} - {"__init__"}
    placed = set().union(*LAYERS)
    assert tops <= placed, f"modules in no layer: {sorted(tops - placed)}"


def test_the_upper_floors_implement_the_federation_seams():
    """``fedhello.federation.seams`` declares what the federation floor needs as Protocols; the run
    floor's prepared experiment and every runtime's runner provide each of their members (by name:
    the Protocols are structural, so nothing else says when one drifts)."""
    import dataclasses

    from fedhello.federation import seams
    from fedhello.federation.attacks import AttackRunner
    from fedhello.federation.simulation import SimulationRunner
    from fedhello.run.preparation import Experiment

    def members(proto) -> set[str]:
        return {n for n in vars(proto) if not n.startswith("_")}

    has = set(dir(Experiment)) | {f.name for f in dataclasses.fields(Experiment)}
    for proto in (seams.LocalClients, seams.ServerExperiment):
        assert members(proto) and members(proto) <= has, (proto.__name__, members(proto) - has)
    runners = [SimulationRunner, AttackRunner]
    try:
        from fedhello.flower.strategy import FlowerRunner
    except ImportError:  # Flower is an optional dependency
        pass
    else:
        runners.append(FlowerRunner)
    for runner in runners:
        lacks = members(seams.ClientRunner) - set(dir(runner))
        assert not lacks, (runner.__name__, lacks)
