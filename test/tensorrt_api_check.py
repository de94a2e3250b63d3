"""Which TensorRT Python names a source file uses, and which of them a TensorRT version lacks.

The names of the real API of each supported version are in ``test/data/tensorrt_api/<v>.txt``
(made by ``scripts/tensorrt_api_names.py``). :func:`uses` walks a module's syntax tree and
collects, with their line numbers:

* every attribute chain on the ``tensorrt`` module alias (``trt.BuilderFlag.FP16``,
  ``trt.Logger.WARNING``, annotations such as ``trt.ICudaEngine`` included);
* attribute accesses and method calls on TensorRT objects -- ``config.set_flag``,
  ``ctx.execute_async_v3``, ``engine.num_io_tensors`` -- where the object's class is known from a
  constructor (``trt.Builder(...)``), an annotation (``engine: trt.ICudaEngine``), the return
  class the name list records for a method or property (``builder.create_builder_config()`` ->
  ``IBuilderConfig``), or a module-level function annotated to return a TensorRT class;
  ``self.x`` attributes are typed from their assignments in the class's methods;
* the methods a class derived from a TensorRT interface defines (``reallocate_output_async`` of
  a ``trt.IOutputAllocator`` subclass), which TensorRT calls by name;
* the members of a ``typing.Protocol`` that a module-level function's parameter is annotated
  with, when a TensorRT object is passed for it (``io_tensors(engine)`` with
  ``engine: EngineLike`` reads ``num_io_tensors``, ``get_tensor_name``, ... of an ICudaEngine).

Objects whose class cannot be inferred this way are not checked (the test asserts that the names
the backend is known to use are all found, so the inference does reach them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Api", "Use", "load_api", "missing", "uses"]


@dataclass(frozen=True)
class Api:
    """The Python API of one TensorRT version: dotted names, return classes, overridables."""

    version: str
    names: frozenset[str]
    returns: dict[str, str] = field(hash=False)
    overrides: frozenset[str]

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(n for n in self.names if "." not in n and n[:1].isupper())

    def has(self, name: str) -> bool:
        return name in self.names or name in self.overrides


@dataclass(frozen=True)
class Use:
    name: str  # dotted, relative to the tensorrt module: "BuilderFlag.FP16"
    line: int
    kind: str  # "module" (trt.X...), "member" (typed object), "override" (subclass method)


def load_api(path: Path) -> Api:
    names: set[str] = set()
    returns: dict[str, str] = {}
    overrides: set[str] = set()
    version = path.stem
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.endswith(" [override]"):
            overrides.add(line.removesuffix(" [override]"))
            continue
        name, _, ret = line.partition(" -> ")
        names.add(name)
        if ret:
            returns[name] = ret
    return Api(version, frozenset(names), returns, frozenset(overrides))


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]`` (``None`` if not a pure name chain)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _strip_dunder(parts: list[str]) -> list[str]:
    out = []
    for p in parts:
        if p.startswith("__"):
            break
        out.append(p)
    return out


class _Walker:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.aliases: set[str] = set()
        self.functions: dict[str, str] = {}  # module-level function -> returned TensorRT class
        self.protocols: dict[str, list[str]] = {}  # Protocol class -> its members
        self.params: dict[str, list[str | None]] = {}  # function -> Protocol of each parameter
        self.found: list[Use] = []

    # ------------------------------------------------------------------ types
    def annotation_class(self, ann: ast.AST | None) -> str | None:
        """``trt.C``, ``trt.C | None``, ``Optional[trt.C]`` or their string forms -> ``C``."""
        if ann is None:
            return None
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                ann = ast.parse(ann.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
            return self.annotation_class(ann.left) or self.annotation_class(ann.right)
        if isinstance(ann, ast.Subscript):
            return self.annotation_class(ann.slice)
        parts = _chain(ann)
        if parts and len(parts) == 2 and parts[0] in self.aliases:
            return parts[1]
        return None

    def type_of(self, expr: ast.AST, env: dict[str, str]) -> str | None:
        if isinstance(expr, ast.Name):
            return env.get(expr.id)
        if isinstance(expr, ast.Attribute):
            parts = _chain(expr)
            if parts and parts[0] == "self" and len(parts) == 2:
                return env.get(f"self.{parts[1]}")
            owner = self.type_of(expr.value, env)
            return self.api.returns.get(f"{owner}.{expr.attr}") if owner else None
        if isinstance(expr, ast.Call):
            func = expr.func
            parts = _chain(func)
            if parts and len(parts) == 2 and parts[0] in self.aliases:
                return parts[1] if parts[1] in self.api.classes else None  # a constructor
            if isinstance(func, ast.Name) and func.id in self.functions:
                return self.functions[func.id]
            if isinstance(func, ast.Attribute):
                owner = self.type_of(func.value, env)
                return self.api.returns.get(f"{owner}.{func.attr}") if owner else None
        return None

    # ------------------------------------------------------------------ walking
    def module(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "tensorrt":
                        self.aliases.add(a.asname or a.name)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(
                (_chain(b) or [""])[-1] == "Protocol" for b in node.bases
            ):
                self.protocols[node.name] = [
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_")
                ]
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                cls = self.annotation_class(node.returns)
                if cls:
                    self.functions[node.name] = cls
                self.params[node.name] = [
                    a.annotation.id
                    if isinstance(a.annotation, ast.Name) and a.annotation.id in self.protocols
                    else None
                    for a in [*node.args.posonlyargs, *node.args.args]
                ]
        self.body(tree.body, {})

    def body(self, stmts: list[ast.stmt], env: dict[str, str]) -> None:
        for stmt in stmts:
            self.statement(stmt, env)

    def statement(self, stmt: ast.stmt, env: dict[str, str]) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            self.function(stmt, env)
            return
        if isinstance(stmt, ast.ClassDef):
            self.klass(stmt, env)
            return
        self.expressions(stmt, env)
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                self.bind(target, stmt.value, env)
        elif isinstance(stmt, ast.AnnAssign):
            cls = self.annotation_class(stmt.annotation)
            if cls is None and stmt.value is not None:
                cls = self.type_of(stmt.value, env)
            key = self.target_key(stmt.target)
            if key and cls:
                env[key] = cls
        for child in ast.iter_child_nodes(stmt):  # blocks of if / for / with / try
            if isinstance(child, ast.stmt):
                self.statement(child, env)
            elif isinstance(child, ast.ExceptHandler):
                self.body(child.body, env)

    def target_key(self, target: ast.AST) -> str | None:
        if isinstance(target, ast.Name):
            return target.id
        parts = _chain(target)
        if parts and parts[0] == "self" and len(parts) == 2:
            return f"self.{parts[1]}"
        return None

    def bind(self, target: ast.AST, value: ast.AST, env: dict[str, str]) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts, strict=False):
                self.bind(t, v, env)
            return
        key = self.target_key(target)
        cls = self.type_of(value, env)
        if key and cls:
            env[key] = cls

    def function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, outer: dict[str, str]) -> None:
        env = dict(outer)
        args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
        for a in args:
            self.annotations(a.annotation)
            cls = self.annotation_class(a.annotation)
            if cls:
                env[a.arg] = cls
        self.annotations(fn.returns)
        for d in fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]:
            self.expr(d, env)
        self.body(fn.body, env)
        for k, v in env.items():  # self.x assignments are visible to the class's other methods
            if k.startswith("self."):
                outer[k] = v

    def klass(self, cls: ast.ClassDef, outer: dict[str, str]) -> None:
        env = {k: v for k, v in outer.items() if not k.startswith("self.")}
        for base in cls.bases:
            self.expr(base, env)
            parts = _chain(base)
            if parts and len(parts) == 2 and parts[0] in self.aliases:
                for item in cls.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        self.found.append(Use(f"{parts[1]}.{item.name}", item.lineno, "override"))
        self.body(cls.body, env)

    # ------------------------------------------------------------------ uses
    def annotations(self, ann: ast.AST | None) -> None:
        if ann is None:
            return
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                parsed = ast.parse(ann.value, mode="eval").body
            except SyntaxError:
                return
            ast.increment_lineno(parsed, getattr(ann, "lineno", 1) - 1)
            ann = parsed
        self.expr(ann, {})

    def expressions(self, stmt: ast.stmt, env: dict[str, str]) -> None:
        """The uses in ``stmt``'s own expressions (not those of nested statements)."""
        if isinstance(stmt, ast.AnnAssign):
            self.annotations(stmt.annotation)
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.expr):
                self.expr(child, env)
            elif isinstance(child, ast.withitem):
                self.expr(child.context_expr, env)

    def expr(self, node: ast.AST, env: dict[str, str]) -> None:
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            if isinstance(call.func, ast.Name) and call.func.id in self.params:
                for proto, arg in zip(self.params[call.func.id], call.args, strict=False):
                    owner = self.type_of(arg, env) if proto else None
                    for member in self.protocols.get(proto or "", []) if owner else []:
                        self.found.append(Use(f"{owner}.{member}", call.lineno, "member"))
        for sub in _outermost_attributes(node):
            parts = _chain(sub)
            if parts and parts[0] in self.aliases:
                name = ".".join(_strip_dunder(parts[1:]))
                if name:
                    self.found.append(Use(name, sub.lineno, "module"))
                continue
            # a member of a typed object, and every member along a chain of them
            self.members(sub, env)

    def members(self, node: ast.Attribute, env: dict[str, str]) -> None:
        inner = node.value
        while isinstance(inner, ast.Attribute | ast.Call | ast.Subscript):
            if isinstance(inner, ast.Attribute):
                self.members(inner, env)
                break
            inner = inner.func if isinstance(inner, ast.Call) else inner.value
        owner = self.type_of(node.value, env)
        if owner and not node.attr.startswith("__"):
            self.found.append(Use(f"{owner}.{node.attr}", node.lineno, "member"))


def _outermost_attributes(node: ast.AST) -> Iterator[ast.Attribute]:
    """The attribute nodes in ``node`` that are not the ``.value`` of another attribute."""
    inner: set[int] = set()
    nodes = list(ast.walk(node))
    for n in nodes:
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute):
            inner.add(id(n.value))
    for n in nodes:
        if isinstance(n, ast.Attribute) and id(n) not in inner:
            yield n


def uses(source: str, api: Api) -> list[Use]:
    """The TensorRT names ``source`` uses (see the module docstring), in line order."""
    walker = _Walker(api)
    walker.module(ast.parse(source))
    return sorted(set(walker.found), key=lambda u: (u.line, u.name))


def missing(source: str, api: Api) -> list[Use]:
    """The uses in ``source`` of names that TensorRT ``api.version`` lacks."""
    return [u for u in uses(source, api) if not api.has(u.name)]
