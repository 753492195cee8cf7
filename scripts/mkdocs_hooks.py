"""MkDocs hooks for the scoresample site (mkdocs.yml: ``hooks: [scripts/mkdocs_hooks.py]``).

The benchmark scripts under ``benchmarks/`` write their result pages to ``docs/benchmarks/NAME.md``
when they are run, so the set of pages is not known when ``mkdocs.yml`` is written. These hooks

- add every ``docs/benchmarks/*.md`` page (except ``index.md``) to the "Benchmarks" section of the
  nav, sorted by file name, and
- replace the marker ``<!-- benchmark-pages -->`` in ``docs/benchmarks/index.md`` by a table with a
  link to each page, its title and the command that produced it (the first command found in the
  page's code blocks that runs a script under ``benchmarks/``).

They also render the math at build time: ``pymdownx.arithmatex`` (generic mode) leaves each formula
as ``\\( ... \\)`` in a ``span.arithmatex`` (``\\[ ... \\]`` in a ``div``), and
:func:`render_math` replaces it by MathML from ``latex2mathml`` (a docs dependency), which browsers
draw natively: the site needs no script and no CDN to show its formulas, and a formula that does
not convert fails the build.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

MARKER = "<!-- benchmark-pages -->"
_COMMAND = re.compile(
    r"^\s*(?:\$\s*)?((?:\S*python3?|\S*scoresample)\s+(?:-m\s+\S+\s+)?\S*benchmarks?\S*.*)$")


def benchmark_pages(docs_dir: str | Path) -> list[Path]:
    """The benchmark result pages present under ``docs_dir/benchmarks``, sorted by name."""
    folder = Path(docs_dir) / "benchmarks"
    return sorted(p for p in folder.glob("*.md") if p.name != "index.md")


def page_title(path: Path) -> str:
    """The first level-1 heading of a markdown page, else its file name."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ").replace("-", " ")


def page_command(path: Path) -> str | None:
    """The first command in a fenced code block that runs a benchmark script, if any."""
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            continue
        candidates = [stripped] if in_code else re.findall(r"`([^`]+)`", line)
        for cand in candidates:
            match = _COMMAND.match(cand)
            if match:
                return match.group(1).strip()
    return None


def on_config(config):
    pages = [f"benchmarks/{p.name}" for p in benchmark_pages(config["docs_dir"])]
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Benchmarks" in entry:
            section = entry["Benchmarks"]
            listed = {item if isinstance(item, str) else next(iter(item.values())) for item in section}
            section.extend(p for p in pages if p not in listed)
    return config


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    pages = benchmark_pages(config["docs_dir"])
    if not pages:
        table = "*No benchmark has been run yet: run the scripts under `benchmarks/` to create the pages.*"
    else:
        rows = ["| Page | Command that produced it |", "| --- | --- |"]
        for path in pages:
            command = page_command(path)
            rows.append(f"| [{page_title(path)}]({path.name}) | "
                        + (f"`{command}`" if command else "(see the page)") + " |")
        table = "\n".join(rows)
    return markdown.replace(MARKER, table)


_MATH = re.compile(r'<(span|div) class="arithmatex">\\([(\[])(.*?)\\([)\]])</\1>', re.DOTALL)


def render_math(text: str) -> str:
    """Replace every arithmatex formula of a page's HTML by MathML (inline or display)."""
    from latex2mathml.converter import convert

    def one(match):
        tag, opening, latex = match.group(1), match.group(2), html.unescape(match.group(3))
        display = "block" if opening == "[" else "inline"
        try:
            mathml = convert(latex.strip(), display=display)
        except Exception as err:  # the converter raises many kinds; the build must name the formula
            raise ValueError(f"latex2mathml could not render {latex!r}: {err}") from err
        return f"<{tag} class=\"arithmatex\">{mathml}</{tag}>"

    return _MATH.sub(one, text)


_TOC_MATH = re.compile(r"\\\((.*?)\\\)")


def _toc_math(items) -> None:
    """The table of contents repeats headings as text: render their inline formulas too."""
    from latex2mathml.converter import convert

    for item in items:
        item.title = _TOC_MATH.sub(lambda m: convert(html.unescape(m.group(1))), item.title)
        _toc_math(item.children)


def on_page_content(html_text, page, config, files):
    _toc_math(page.toc.items)
    return render_math(html_text)
