"""A Griffe extension for the docs site (mkdocs.yml): load the package's folders that have no
``__init__.py`` (``onepeace/model`` is an implicit namespace package inside a regular one), which
Griffe's static loader skips on purpose, so that the API reference can document ``OnePeace`` and
the other classes defined there. It only reads files; nothing is imported."""

from __future__ import annotations

from pathlib import Path

import griffe


class NamespaceSubpackages(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        root = Path(pkg.filepath).parent if not isinstance(pkg.filepath, list) else Path(pkg.filepath[0])
        self._walk(pkg, root, loader)

    def _walk(self, parent: griffe.Module, folder: Path, loader: griffe.GriffeLoader) -> None:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()):
            has_py = any(sub.glob("*.py"))
            if parent.members.get(sub.name) is not None:
                if isinstance(parent.members[sub.name], griffe.Module):
                    self._walk(parent.members[sub.name], sub, loader)
                continue
            if not has_py or (sub / "__init__.py").exists():
                continue
            ns = griffe.Module(sub.name, filepath=[sub], parent=parent)
            parent.set_member(sub.name, ns)
            for f in sorted(sub.glob("*.py")):
                mod = griffe.visit(f.stem, f, f.read_text(encoding="utf-8"), parent=ns,
                                   extensions=loader.extensions, docstring_parser=loader.docstring_parser,
                                   docstring_options=loader.docstring_options,
                                   lines_collection=loader.lines_collection,
                                   modules_collection=loader.modules_collection)
                ns.set_member(f.stem, mod)
