"""`make lint`: fail when modules of a package import each other in a cycle.

Every import counts, at the top, inside a function or under TYPE_CHECKING: a cycle is a knot
in the design even where Python tolerates it at run time (a lazy import, a type-only import),
and the next module added to it may not be tolerated. import-linter's contracts say who may
import whom; this says that, whoever it is, no module depends on itself through others.

    python tools/import_cycles.py [PACKAGE ...]      # default: sipdht; exit 1 on a cycle
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import grimp

Graph = Mapping[str, Iterable[str]]


def import_graph(package: str) -> tuple[dict[str, set[str]], grimp.ImportGraph]:
    """Module -> the modules of `package` it imports directly."""
    graph = grimp.build_graph(package, cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}, graph


def cycles(graph: Graph) -> list[list[str]]:
    """The groups of modules that reach each other through imports (strongly connected
    components with more than one module, or a module importing itself), each sorted.
    Tarjan's algorithm, iterative: a deep import chain must not hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, ()):
                    found.append(sorted(group))
    return sorted(found)


def describe(group: list[str], graph: Graph, details: grimp.ImportGraph | None = None) -> str:
    """The imports that close the cycle, one per line, with where they are."""
    lines = [f"import cycle between {len(group)} modules: {', '.join(group)}"]
    members = set(group)
    for importer in group:
        for imported in sorted(set(graph.get(importer, ())) & members):
            where = ""
            if details is not None:
                found = details.get_import_details(importer=importer, imported=imported)
                where = " (line " + ", ".join(str(d["line_number"]) for d in found) + ")"
            lines.append(f"  {importer} -> {imported}{where}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    failed = False
    for package in argv or ["sipdht"]:
        graph, details = import_graph(package)
        found = cycles(graph)
        for group in found:
            print(describe(group, graph, details))
        if found:
            failed = True
            print(f"{package}: {len(found)} import cycle(s)")
        else:
            print(f"{package}: no import cycles ({len(graph)} modules)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
