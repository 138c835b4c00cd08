"""Generated sections of a Markdown page, between `<!-- name:begin -->` and `<!-- name:end -->`."""

import pathlib


def replace_section(path: pathlib.Path, name: str, body: str) -> None:
  """Puts `body` between the page's markers for `name`; appends the section if it has none."""
  begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
  text = path.read_text() if path.exists() else ""
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
  else:
    head, tail = text + ("\n" if text and not text.endswith("\n") else ""), "\n"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f"{head}{begin}\n{body.rstrip()}\n{end}{tail}")
