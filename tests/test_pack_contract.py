"""The pack as ComfyUI sees it: import, registration and every node's declared interface."""
import ast
import sys

import pytest
from packloader import PACK_ROOT, load_pack

pack = load_pack()
NODE_ITEMS = sorted(pack.NODE_CLASS_MAPPINGS.items())
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def test_exports_what_comfyui_reads():
    assert pack.NODE_CLASS_MAPPINGS, "no nodes registered"
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert (PACK_ROOT / pack.WEB_DIRECTORY).is_dir()
    assert list((PACK_ROOT / pack.WEB_DIRECTORY).rglob("*.js")), "web directory has no extension"
    assert len(set(pack.NODE_DISPLAY_NAME_MAPPINGS.values())) == len(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert all(key.startswith("TalkingFace") for key in pack.NODE_CLASS_MAPPINGS)


def test_loading_the_pack_needs_no_comfyui():
    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules


def _python_files(*folders):
    for folder in folders:
        yield from (PACK_ROOT / folder).rglob("*.py")


@pytest.mark.parametrize("path", list(_python_files("nodes", "pipelines")) + [PACK_ROOT / "__init__.py"],
                         ids=lambda p: str(p.relative_to(PACK_ROOT)))
def test_imports_inside_the_pack_are_relative(path):
    """ComfyUI imports the folder under a path-derived name: an absolute import of our own package breaks."""
    tree = ast.parse(path.read_text())
    own = {"nodes", "pipelines", "bench", "scripts", "tests"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            assert node.module.split(".")[0] not in own, f"{path.name}: absolute import of {node.module}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in own, f"{path.name}: absolute import of {alias.name}"
    if "pipelines" in path.parts:
        text = path.read_text()
        assert "import comfy" not in text and "folder_paths" not in text, f"{path.name} imports ComfyUI"


@pytest.mark.parametrize(("key", "node_class"), NODE_ITEMS, ids=[k for k, _ in NODE_ITEMS])
def test_node_contract(key, node_class):
    assert node_class.CATEGORY.split("/")[0] == "TalkingFace"
    assert callable(getattr(node_class, node_class.FUNCTION, None)), f"{key}.FUNCTION does not name a method"
    assert isinstance(node_class.DESCRIPTION, str) and node_class.DESCRIPTION
    returns = node_class.RETURN_TYPES
    assert isinstance(returns, tuple)
    names = getattr(node_class, "RETURN_NAMES", returns)
    assert len(names) == len(returns)
    if returns:
        assert len(node_class.OUTPUT_TOOLTIPS) == len(returns)
    else:
        assert getattr(node_class, "OUTPUT_NODE", False), f"{key} returns nothing but is not an output node"

    spec = node_class.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, f"{key}.{name}"
            kind, options = entry[0], (entry[1] if len(entry) == 2 else {})
            assert options.get("tooltip"), f"{key}.{name} has no tooltip"
            if isinstance(kind, list):
                if "default" in options:
                    assert options["default"] in kind, f"{key}.{name} default not among its choices"
            elif kind in WIDGET_TYPES:
                assert "default" in options, f"{key}.{name} has no default"
                if kind in {"INT", "FLOAT"}:
                    assert options["min"] <= options["default"] <= options["max"], f"{key}.{name} range"
            else:
                assert kind.isupper(), f"{key}.{name}: socket type {kind!r} should be an upper-case type name"
