"""report.md: sections of text, tables and figures, each figure with a numbered caption that
names the command, the profile file(s) and the data behind it."""

from __future__ import annotations

from dataclasses import dataclass, field


def code(text: str) -> str:
    """Inline code that survives backticks inside ``text``."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


@dataclass
class Markdown:
    lines: list[str] = field(default_factory=list)
    figures: int = 0

    def h(self, level: int, text: str) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def bullets(self, items: list[str]) -> None:
        self.lines += [f"- {i}" for i in items] + [""]

    def table(self, text: str) -> None:
        self.lines += [text, ""]

    def figure(self, file: str, alt: str, caption: str, provenance: list[str]) -> None:
        self.figures += 1
        self.lines += [f"![{alt}]({file})", "",
                       f"*Figure {self.figures}. {caption}*", ""]
        self.lines += [f"> {line}  " for line in provenance] + [""]

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


__all__ = ["Markdown", "code"]
