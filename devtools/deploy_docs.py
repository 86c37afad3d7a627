"""The shell commands of a section of docs/deployment.md, as `make deploy-test` runs them.

The deployment guide's fenced ```bash blocks are what a user types; the deploy test runs exactly
these lines (extracted here, never copied), so the guide and the test cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path


def doc_commands(path: Path, section: str) -> list[str]:
    """The commands of the ```bash blocks under the `## <section>` heading, in order: comment and
    blank lines dropped, lines ending in a backslash joined with the next."""
    commands: list[str] = []
    inside_section = inside_block = False
    pending = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            inside_section = line[3:].strip() == section
            continue
        if not inside_section:
            continue
        if line.strip().startswith("```"):
            inside_block = line.strip() == "```bash" and not inside_block
            continue
        if not inside_block or not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " "
            continue
        commands.append(pending)
        pending = ""
    if not commands:
        raise ValueError(f"{path.name}: no ```bash commands under '## {section}'")
    return commands
