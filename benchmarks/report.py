"""Generated sections of a Markdown page, between `<!-- name:begin -->` and `<!-- name:end -->`,
and the pieces of the benchmark tables that no single benchmark script writes."""

import pathlib
import statistics


def markers(name: str) -> tuple[str, str]:
  return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replaced(text: str, name: str, body: str) -> str:
  """`text` with `body` between its markers for `name`; the section appended if it has none."""
  begin, end = markers(name)
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
  else:
    head, tail = text + ("\n" if text and not text.endswith("\n") else ""), "\n"
  return f"{head}{begin}\n{body.rstrip()}\n{end}{tail}"


def section(text: str, name: str) -> str:
  """What stands between the markers for `name` in `text` (ValueError if it has none)."""
  begin, end = markers(name)
  if begin not in text or end not in text:
    raise ValueError(f"no {begin} ... {end} section")
  return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def replace_section(path: pathlib.Path, name: str, body: str) -> None:
  """Puts `body` between the page's markers for `name`; appends the section if it has none."""
  text = path.read_text() if path.exists() else ""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(replaced(text, name, body))


def as_markdown(text: str, notes=()) -> str:
  """A benchmark's plain-text report as Markdown: its lines around the table, and `notes`,
  as a list before the table (each line its own item, as in the terminal), the table as
  a table."""
  lines = text.strip("\n").splitlines()
  table = [i for i, line in enumerate(lines) if line.startswith("|")]
  first, last = (table[0], table[-1]) if table else (len(lines), len(lines) - 1)
  items = [f"- {line}" for line in lines[:first] + list(notes) + lines[last + 1:] if line]
  return "\n".join(items + ([""] if items and table else []) + lines[first:last + 1])


def measured_when(data: dict) -> str:
  """The date line of a benchmark's JSON: its `date`, or that it records none."""
  environment = data.get("environment", {}) if isinstance(data, dict) else {}
  date = environment.get("date") or (data.get("date") if isinstance(data, dict) else None)
  return f"date: {date}" if date else "date: not recorded in the JSON"


def ratio_ranges(records, peers=None) -> str:
  """A table of the least and greatest ratio to PyTorch of each peer in each mode."""
  rated = [r for r in records if r.get("status") == "ok" and "ratio_vs_torch" in r
           and r["peer"] != "torch" and (peers is None or r["peer"] in peers)]
  modes = list(dict.fromkeys(r["mode"] for r in rated))
  lines = ["| peer | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
  for peer in dict.fromkeys(r["peer"] for r in rated):
    cells = []
    for mode in modes:
      ratios = [r["ratio_vs_torch"] for r in rated if r["peer"] == peer and r["mode"] == mode]
      cells.append(f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-")
    lines.append(f"| {peer} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def train_loop_table(data: dict) -> str:
  """The loop-throughput benchmark's JSON (benchmarks/train_loop.py) as a table, in the
  plain-text form of the other benchmarks' reports."""
  env = data["environment"]
  intervals = data["program_intervals_images_per_s"]
  median = statistics.median(intervals)
  return "\n".join([
      f"device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores)",
      "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()
                               if k in ("stnjax", "jax", "jaxlib")),
      f"RTS 42x42, ST-CNN affine, batch {data['batch_size']}",
      "",
      "| what | images/s |",
      "|---|---|",
      f"| the jitted step alone | {data['step_alone_images_per_s']:.0f} |",
      f"| the program's loop (median of {len(intervals)} intervals between metric reads) "
      f"| {median:.0f} |",
      f"| ratio, program / step alone | {data['ratio']:.2f} |",
  ])
