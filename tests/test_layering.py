"""The library's arrows run one way, and modules share only public names."""
import ast

import pytest
from packloader import PACK_ROOT

PIPELINES = PACK_ROOT / "pipelines"
PIPELINE_FILES = sorted(PIPELINES.rglob("*.py"))


def pack_imports(path):
    """``(module path inside pipelines/, imported names)`` of every relative import of ``path``."""
    package = path.relative_to(PIPELINES).parent.parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            yield (*base, *(node.module.split(".") if node.module else ())), [alias.name for alias in node.names]


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: str(p.relative_to(PACK_ROOT)))
def test_no_module_imports_a_private_name_of_another(path):
    private = [(".".join(module), name) for module, names in pack_imports(path) for name in names if name.startswith("_")]
    assert not private, f"{path.name} imports private names {private}: make them public where they live, or move them"


@pytest.mark.parametrize("path", sorted((PIPELINES / "morphable").rglob("*.py")), ids=lambda p: str(p.relative_to(PACK_ROOT)))
def test_the_face_model_imports_nothing_above_it(path):
    above = {"render", "face", "generator", "training", "audio", "emotion"}
    upward = [".".join(module) for module, _ in pack_imports(path) if module and module[0] in above]
    assert not upward, f"{path.name} imports {upward}: morphable/ sits below them"


def test_the_checks_read_relative_imports():
    path = PIPELINES / "face" / "appearance.py"
    modules = {".".join(module) for module, _ in pack_imports(path)}
    assert {"morphable.camera", "render.rasterizer", "errors"} <= modules
