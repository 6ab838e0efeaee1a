"""The fenced code blocks of README.md and docs/*.md, with the marker that says how a test runs them.

A block is ``sh``, ``python``, ``yaml`` or ``text``. A line ``<!-- docs-test: MODE -->`` right
before the fence says how the suite runs it:

=========================== ============================================================
(no marker)                 ``sh``/``python``: run from the repository root in the quick
                            loop; ``yaml``: parsed; ``text``: not code (a listing, output)
``after-recipe DIR``        run in ``DIR`` (a recipe) after a mini-mode run of that recipe
                            (slow)
``not run: REASON``         shown, not run (a real corpus, a GPU, a model hub, a whole
                            ``run_all.sh``); the reason is listed by the suite
=========================== ============================================================

A block with another language, or an unknown marker, is refused, so every example is either
run or says why it cannot be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LANGUAGES = ("sh", "python", "yaml", "text")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the fence's line number
    language: str
    code: str
    marker: str  # "" when none

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def mode(self) -> str:
        """``run``, ``parse``, ``text``, ``after-recipe`` or ``not run``."""
        if self.marker.startswith("not run:"):
            return "not run"
        if self.marker.startswith("after-recipe "):
            return "after-recipe"
        if self.marker:
            return "unknown marker"
        return {"sh": "run", "python": "run", "yaml": "parse", "text": "text"}.get(self.language, "unknown language")

    @property
    def recipe(self) -> str:
        return self.marker.split(None, 1)[1] if self.mode == "after-recipe" else ""

    @property
    def reason(self) -> str:
        return self.marker.split(":", 1)[1].strip() if self.mode == "not run" else ""


def blocks(path: Path) -> list[Block]:
    """Every fenced block of one Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence:
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            previous = lines[index - 1] if index else ""
            marker = _MARKER.match(previous.strip())
            indent = len(fence.group(1))
            code = "\n".join(line[indent:] for line in lines[index + 1:end])
            found.append(Block(path, index + 1, fence.group(2), code, marker.group(1) if marker else ""))
            index = end
        index += 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in blocks(path)]
