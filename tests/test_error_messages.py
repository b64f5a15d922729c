"""Every error that can reach a ComfyUI user says which node and which input (or file) it is about,
and never shows a path of the server's disk.

The rule, for new code too: in ``nodes/`` and ``pipelines/`` (but ``pipelines/training/``, which only
the command-line scripts use), a user error is ``TalkingFaceError`` or a subclass, or ``node.fail(...)``.
The node is named for free: ``fail`` prefixes the node's name, and ``TalkingFaceNode.execute`` prefixes
it to every ``TalkingFaceError`` from the pipelines. So the message itself must name

- an input as the node shows it (any node's input name as a word: ``audio``, ``checkpoint``, ``fps``,
  ``images``, ``file`` …), or a node by its display name, or
- the file it is about (a placeholder ending in ``.name``, or ``file_name``/``name``), or its model
  folder (``ComfyUI/…``);

and no placeholder may format a path object itself (``{path}``, ``{folder}``, ``{root}`` …): use its
``.name`` or the folder hint. Checks on the pack's own invariants that no input can break raise
``ValueError``/``KeyError`` instead, which this test leaves alone.
"""
import ast
import re

import pytest
from packloader import PACK_ROOT, load_pack

pack = load_pack()
USER_ERRORS = {"TalkingFaceError", "ModelFileError", "NodeInputError", "fail"}
COMMAND_LINE_ONLY = ("pipelines/training/",)
FILE_PLACEHOLDERS = {"file_name", "name", "file", "checkpoint", "model_name", "clip_name", "vae_name", "weights_name"}
PATH_NAMES = re.compile(r"(^|_)(path|folder|root|directory|dir|parent|location)$")
# Messages passed on whole (a variable, or an error of another node re-raised): checked where they are made.
PASSED_ON = {
    ("nodes/base.py", "NodeInputError"),  # re-raises a pipeline error with the node's name in front
    ("nodes/host.py", "ModelFileError"),  # built by missing_model_message: file, folder and fix
}


def _input_names() -> set[str]:
    names = set()
    for node_class in pack.NODE_CLASS_MAPPINGS.values():
        for section in node_class.INPUT_TYPES().values():
            names.update(name.lower() for name in section)
    return names


INPUT_NAMES = _input_names()
NODE_NAMES = {name.lower() for name in pack.NODE_DISPLAY_NAME_MAPPINGS.values()}


def _user_raises():
    for path in sorted([*(PACK_ROOT / "nodes").rglob("*.py"), *(PACK_ROOT / "pipelines").rglob("*.py")]):
        relative = path.relative_to(PACK_ROOT).as_posix()
        if relative.startswith(COMMAND_LINE_ONLY):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                function = node.exc.func
                kind = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
                if kind in USER_ERRORS and (relative, kind) not in PASSED_ON:
                    yield f"{relative}:{node.lineno}", kind, node.exc


RAISES = list(_user_raises())


def _placeholders(call: ast.Call) -> list[ast.expr]:
    return [value.value for value in ast.walk(call) if isinstance(value, ast.FormattedValue)]


def _words(call: ast.Call) -> str:
    return " ".join(c.value for c in ast.walk(call) if isinstance(c, ast.Constant) and isinstance(c.value, str)).lower()


def test_the_walk_finds_the_raises():
    assert len(RAISES) > 100 and any(kind == "fail" for _, kind, _ in RAISES)


@pytest.mark.parametrize("where, kind, call", RAISES, ids=[where for where, _, _ in RAISES])
def test_a_user_error_names_an_input_node_or_file(where, kind, call):
    if kind == "fail":
        return  # fail() puts the node's name first
    text = _words(call)
    words = set(re.findall(r"[a-z_0-9]+", text))
    names_input = bool(words & INPUT_NAMES) or any(name in text for name in NODE_NAMES) or "comfyui/" in text
    names_file = any(
        (isinstance(value, ast.Attribute) and value.attr == "name") or (isinstance(value, ast.Name) and value.id in FILE_PLACEHOLDERS)
        for value in _placeholders(call)
    )
    assert names_input or names_file, f"{where}: say which input (or file) this is about: {ast.unparse(call)[:200]}"


@pytest.mark.parametrize("where, kind, call", RAISES, ids=[where for where, _, _ in RAISES])
def test_a_user_error_shows_no_server_path(where, kind, call):
    for value in _placeholders(call):
        name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else ""
        assert not PATH_NAMES.search(name), f"{where}: show {name}.name or the folder hint, not the server's path: {ast.unparse(value)}"
