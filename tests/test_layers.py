"""Arrows point down only (docs/architecture.md): each package imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vla_compress"
# what each layer may import from vla_compress (itself and the leaf `deps` always)
ALLOWED = {
    "deps": set(),
    "modeling": set(),
    "calibration": {"modeling"},
    "pruning": {"calibration", "modeling"},
    "quantization": {"calibration", "modeling"},
    "envs": set(),
    "data": {"envs", "modeling"},
}


def imported_layers(path: Path) -> set[str]:
    """The top-level vla_compress packages / modules a source file imports (absolute or relative)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # directories below vla_compress/
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to vla_compress/, then the module path
                if node.level <= depth:
                    continue  # stays inside its own package
                names = [node.module or ""]
                names = [f"vla_compress.{name}" if name else "vla_compress" for name in names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "vla_compress" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_is_below_it(layer):
    files = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    for path in files:
        above = imported_layers(path) - ALLOWED[layer] - {layer, "deps"}
        assert not above, f"{path.relative_to(PACKAGE.parent)} imports {sorted(above)}"
