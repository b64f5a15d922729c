"""No node calls another node: what two nodes share is a plain function (as ComfyUI's ``composite()``
serves two mask nodes), so each node's inputs, errors and progress stay its own."""
import ast

from packloader import PACK_ROOT, load_pack

pack = load_pack()
NODE_CLASS_NAMES = {cls.__name__ for cls in pack.NODE_CLASS_MAPPINGS.values()}


def node_calls(source: str, node_names: set[str]) -> list[str]:
    """``where: callee`` for every call, inside any function, whose callee is a node class (built,
    or one of its methods called through the class), other than the class the function belongs to."""
    found = []

    def called_class(func: ast.expr) -> str | None:
        while isinstance(func, ast.Attribute):
            func = func.value
        return func.id if isinstance(func, ast.Name) else None

    def visit(tree: ast.AST, owner: str | None, in_function: bool) -> None:
        for child in ast.iter_child_nodes(tree):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name, False)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, owner, True)
                continue
            if in_function and isinstance(child, ast.Call):
                callee = called_class(child.func)
                if callee in node_names and callee != owner:
                    found.append(f"{owner or 'module function'} line {child.lineno}: {callee}")
            visit(child, owner, in_function)

    visit(ast.parse(source), None, False)
    return found


def test_no_node_calls_another_node():
    calls = {path.name: node_calls(path.read_text(), NODE_CLASS_NAMES) for path in (PACK_ROOT / "nodes").glob("*.py")}
    assert not any(calls.values()), {name: found for name, found in calls.items() if found}


def test_the_check_sees_a_node_built_or_called_through_its_class():
    source = '''
class Preview:
    def run(self, x):
        return Render().run(x)[0]

class Other:
    def run(self, x):
        helper = lambda y: Render.run(None, y)
        return Other.more(x), helper(x)

def shared(x):
    return Render(x)

NODES = (Render, Preview)
'''
    assert node_calls(source, {"Render", "Preview", "Other"}) == [
        "Preview line 4: Render", "Other line 8: Render", "module function line 12: Render",
    ]
