#!/usr/bin/env python3
"""Finds import loops between the crate's modules.

The graph: an edge A -> B when code of module A names `crate::B...` (in a `use` or inline
path, braces included: `use crate::{b, c::d}`) or reaches B through `super::` chains. Modules are
the top-level ones (`src/<name>.rs`, `src/<name>/`) unless `--depth N` asks for deeper paths.
Test code is left out (files named tests.rs or props.rs or under a tests/ folder, and the item
after a `#[cfg(test)]` attribute), as are comments. Every strongly connected group of two or more
modules is a loop: each is printed with its edges and the first file:line of each edge.

Exit 0 without loops, 1 with any. With `--baseline FILE` (lines `a -> b  # why`), the listed
edges are known loop edges waiting to be broken: the check fails only on a loop that remains
without them, so a new `use` that closes another loop fails while the known ones are worked
off (a listed edge that is gone is reported, to be deleted from the file). `--suggest` prints,
for the loops found, the fewest-sites set of edges whose removal breaks them all (a greedy
ordering of the modules; the edges against it), in the baseline's format.
"""

import argparse
import os
import re
import sys

PATH = re.compile(r"\b(crate|(?:super::)+super|super)::(\{|\w+)")
IDENT = re.compile(r"\s*(\w+)")


def module_path(rel):
    """src/dialect/openai/mod.rs -> ['dialect', 'openai']; src/lib.rs -> []."""
    parts = rel[:-3].split(os.sep)[1:]
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def is_test_file(rel):
    parts = rel.split(os.sep)
    return parts[-1] in ("tests.rs", "props.rs") or "tests" in parts[1:-1]


def code_lines(text):
    """(line number, code) with comments removed and test-only items skipped.

    A `#[cfg(test)]` attribute hides the one item it marks: a line ending in `;`
    (`mod tests;`, a `use`) or a braced item up to its closing brace. The code after it
    is read again, so a file's later edges are not lost.
    """
    skipping, depth, opened = False, 0, False
    for number, line in enumerate(text.splitlines(), 1):
        cut = line.find("//")
        code = line if cut < 0 else line[:cut]
        stripped = code.strip()
        if stripped.startswith("#[cfg(test)]"):
            skipping, depth, opened = True, 0, False
            code = stripped[len("#[cfg(test)]"):]
            stripped = code.strip()
            if not stripped:
                continue
        if skipping:
            if not opened and stripped.startswith("#["):
                continue
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            if (opened and depth <= 0) or (not opened and stripped.endswith(";")):
                skipping = False
            continue
        yield number, code


def brace_heads(text, start):
    """First identifiers of the items of a `{...}` group opening at `start`."""
    depth, item, heads = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and ch == ",":
            heads.append(item)
            item = ""
        elif depth >= 1:
            item += ch
    heads.append(item)
    return [m.group(1) for h in heads if (m := IDENT.match(h)) and m.group(1) != "self"]


def targets(path, base_kind, first, text, end):
    """Module paths named by one occurrence: `crate::x`, `super::x`, `crate::{x, y}`."""
    if base_kind == "crate":
        base = []
    else:
        ups = base_kind.count("super")
        base = path[: max(len(path) - ups, 0)]
    heads = brace_heads(text, end - 1) if first == "{" else [first]
    return [base + [h] for h in heads]


def edges(src, depth):
    found = {}  # (a, b) -> first "file:line"
    for root, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            full = os.path.join(root, name)
            rel = os.path.relpath(full, os.path.dirname(src))
            if rel == os.path.join("src", "main.rs") or is_test_file(rel):
                continue
            path = module_path(rel)
            if not path:
                continue  # lib.rs only declares the modules
            with open(full, encoding="utf-8") as f:
                lines = list(code_lines(f.read()))
            # `use` groups span lines: search the file's code as one text, lines kept apart.
            text = "\n".join(code for _, code in lines)
            starts = [0]
            for _, code in lines:
                starts.append(starts[-1] + len(code) + 1)
            for m in PATH.finditer(text):
                line = lines[next(i for i, s in enumerate(starts) if s > m.start()) - 1][0]
                for target in targets(path, m.group(1), m.group(2), text, m.end()):
                    a, b = tuple(path[:depth]), tuple(target[:depth])
                    if a != b and b and b[0] not in ("self",):
                        found.setdefault((a, b), []).append(f"{rel}:{line}")
    return found


def sccs(nodes, adjacency):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adjacency.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def feedback_edges(found, group):
    """Edges against a greedy order of `group` (Eades-Lin-Smyth, weighted by use sites)."""
    members = set(group)
    weight = {e: len(sites) for e, sites in found.items() if e[0] in members and e[1] in members}
    left, head, tail = set(members), [], []
    while left:
        degree = lambda v, side: sum(w for e, w in weight.items() if e[side] == v and e[1 - side] in left)
        sinks = [v for v in sorted(left) if degree(v, 0) == 0]
        sources = [v for v in sorted(left) if degree(v, 1) == 0]
        if sinks:
            tail.append(sinks[0])
            left.discard(sinks[0])
        elif sources:
            head.append(sources[0])
            left.discard(sources[0])
        else:
            best = max(sorted(left), key=lambda v: degree(v, 0) - degree(v, 1))
            head.append(best)
            left.discard(best)
    order = {v: i for i, v in enumerate(head + tail[::-1])}
    return sorted(e for e in weight if order[e[0]] > order[e[1]])


def read_baseline(path):
    known = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            a, arrow, b = text.partition("->")
            if not arrow:
                sys.exit(f"{path}:{number}: expected `a -> b`")
            known[(tuple(a.strip().split("::")), tuple(b.strip().split("::")))] = number
    return known


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"))
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--baseline")
    parser.add_argument("--suggest", action="store_true")
    args = parser.parse_args()
    found = edges(os.path.normpath(args.src), args.depth)
    name = "::".join
    known = read_baseline(args.baseline) if args.baseline else {}
    for edge, number in sorted(known.items(), key=lambda kv: kv[1]):
        if edge not in found:
            print(f"{args.baseline}:{number}: {name(edge[0])} -> {name(edge[1])} is gone: delete the line")
    adjacency, nodes = {}, set()
    for a, b in found:
        nodes.update((a, b))
        if (a, b) not in known:
            adjacency.setdefault(a, set()).add(b)
    loops = [g for g in sccs(nodes, adjacency) if len(g) > 1]
    for group in loops:
        members = set(group)
        print(f"import loop: {', '.join(name(m) for m in group)}")
        for (a, b), sites in sorted(found.items()):
            if a in members and b in members and (a, b) not in known:
                print(f"  {name(a)} -> {name(b)}  ({sites[0]}, {len(sites)} site(s))")
        if args.suggest:
            print("  edges to break (or list in the baseline):")
            for a, b in feedback_edges(found, group):
                print(f"{name(a)} -> {name(b)}  # {found[(a, b)][0]}, {len(found[(a, b)])} site(s)")
    baselined = sum(1 for e in known if e in found)
    print(
        f"{len(nodes)} modules, {len(found)} edges, {len(loops)} loop(s)"
        + (f", {baselined} known loop edge(s) in {args.baseline}" if args.baseline else "")
    )
    return 1 if loops else 0


if __name__ == "__main__":
    sys.exit(main())
