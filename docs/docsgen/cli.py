"""The CLI reference page, from the click commands themselves: each command's `--help`, as
`kubemap COMMAND --help` prints it, under a heading of its own.

mkdocs-click was tried first: it reflows the help's preformatted paragraphs (click's `\\b`
blocks: the examples, the table of which commands need a cluster) into running text, and
shows click 8.3+'s UNSET sentinel as the default of every flag. The help text as the
terminal shows it is what a reader will meet, so that is what this page shows.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

WIDTH = 96


def _commands(
    command: click.Command, context: click.Context
) -> Iterator[tuple[click.Context, click.Command]]:
    yield context, command
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(context)):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                # the context a real invocation makes: settings (-h) inherited from the parent
                child = sub.context_class(
                    sub, info_name=name, parent=context, **sub.context_settings
                )
                yield from _commands(sub, child)


def cli_page(root: click.Command, prog: str = "kubemap") -> str:
    lines = [
        "# CLI",
        "",
        f"Every `{prog}` command with its options, generated at build time from the click "
        f"commands: what `{prog} COMMAND --help` prints. How to use them: "
        "[the CLI guide](../guides/cli.md).",
        "",
    ]
    settings = {**root.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    root_context = root.context_class(root, info_name=prog, **settings)
    for context, command in _commands(root, root_context):
        lines += [f"## {context.command_path}", ""]
        lines += ["```text", command.get_help(context).rstrip(), "```", ""]
    return "\n".join(lines)
