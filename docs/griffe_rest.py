"""A griffe extension for the API reference: prunelab's docstrings are written in reST
(``x``, :func:`y`, "Example::"); MkDocs renders Markdown.  Roles become code spans, so
:func:`prunelab.core.search` shows as `prunelab.core.search`, and a paragraph ending in "::"
ends in ":" (the indented block after it is code in Markdown too).  The docstrings themselves
stay as they are: the same text is the CLI's --help (see prunelab.cli.common.plain)."""

from __future__ import annotations

import re

from griffe import Extension, Object

ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`~?([^`]+)`")
DOUBLE_COLON = re.compile(r"(\S)::(?=[ \t]*$)", re.M)


def markdown(text: str) -> str:
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return DOUBLE_COLON.sub(r"\1:", text)


class ReSTRoles(Extension):
    def on_object(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)

    def on_package(self, *, pkg: Object, **kwargs) -> None:  # a top-level package's own docstring
        self.on_object(obj=pkg)
