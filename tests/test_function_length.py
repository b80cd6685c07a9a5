"""House rule: no function of the package, eval, data tools or benchmarks is longer than 80 lines."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("lit_avatar", "eval", "data_tools", "bench")
MAX_LINES = 80


def long_functions(root: Path = ROOT, max_lines: int = MAX_LINES) -> dict[str, int]:
    """'path:qualified.name' -> lines (decorators included) of every function over `max_lines`."""
    found = {}
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            found.update(_long_in(tree, path.relative_to(root).as_posix(), max_lines))
    return found


def _long_in(tree: ast.AST, rel: str, max_lines: int, prefix: str = "") -> dict[str, int]:
    found = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > max_lines:
                    found[f"{rel}:{name}"] = node.end_lineno - first + 1
            found.update(_long_in(node, rel, max_lines, name + "."))
    return found


def test_no_function_is_over_80_lines():
    too_long = long_functions()
    assert not too_long, f"functions over {MAX_LINES} lines (split them): {too_long}"


def test_the_scan_sees_a_long_method_and_a_nested_function(tmp_path):
    (tmp_path / "bench").mkdir()
    lines = [f"x{i} = {i}" for i in range(80)]
    method = "\n".join("        " + line for line in lines)  # 1 + 80 lines: over
    inner = "\n".join("            " + line for line in lines[:-1])  # 1 + 79: at the limit
    (tmp_path / "bench" / "m.py").write_text(f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{method}\n"
                                            f"\n    @staticmethod\n    def outer():\n        def inner():\n{inner}\n")
    # outer: decorator + def + inner's 80 lines = 82
    assert long_functions(tmp_path) == {"bench/m.py:C.long": 81, "bench/m.py:C.outer": 82}
