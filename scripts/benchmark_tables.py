"""Writes the benchmark tables of the docs from the committed JSON measurements.

    python scripts/benchmark_tables.py            # rewrite the generated sections
    python scripts/benchmark_tables.py --check    # exit 1 if a page differs from the JSON

Each table sits between `<!-- name:begin -->` and `<!-- name:end -->` markers in its page
(docs/guide/benchmarks.md, docs/guide/antialiasing.md) and is written by the benchmark
script's own formatting (benchmarks/sampler.py, training.py, antialias.py,
antialias_training.py, ndimage.py) or by benchmarks/report.py, headed by the device, versions and
date the JSON records. To update a table, rerun the benchmark with `--json` onto the
committed file, then this script. tests/test_docs.py checks that the pages match.
"""

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

BENCHMARKS_PAGE = DOCS / "guide" / "benchmarks.md"
ANTIALIAS_PAGE = DOCS / "guide" / "antialiasing.md"


def _load(name):
  return json.loads((DOCS / name).read_text())


def _sampler(name, peers=None):
  import sampler
  data = _load(name)
  records = [r for r in data["records"] if peers is None or r["peer"] in peers]
  return "\n".join([
      report.as_markdown(sampler.table(data["environment"], records),
                         [f"{report.measured_when(data)}; from `docs/{name}`"]),
      "",
      "Ratio to PyTorch, least and greatest over the shapes:",
      "",
      report.ratio_ranges(records),
  ])


def sampler_2d():
  return _sampler("sampler_cpu.json")


def sampler_3d():
  import sampler
  # The 2-D-only peers skip every volume; the table shows the peers that ran.
  return _sampler("sampler_cpu_volumes.json", peers=sampler.VOLUME_PEERS)


def _antialias_parts():
  """The antialiasing benchmark's report: (its header lines, error table, cost table)."""
  import antialias
  data = _load("antialias_cpu.json")
  text = antialias.tables(data["environment"], data["errors"], data["costs"])
  header, errors, costs = text.split("\n\n")
  return header + f"\n{report.measured_when(data)}; from `docs/antialias_cpu.json`", errors, costs


def antialias_errors():
  header, errors, _ = _antialias_parts()
  return report.as_markdown(f"{header}\n{errors}")


def antialias_costs():
  header, _, costs = _antialias_parts()
  return report.as_markdown(f"{header}\npage faults per call: minor faults, plain / antialiased"
                            f"\n{costs}")


def antialias_training():
  import antialias_training as benchmark
  records = _load("antialias_training_cpu.json")
  steps = sorted({r["steps"] for r in records})
  return "\n".join([
      "- device, versions and date: not recorded in the JSON (a list of runs); "
      "from `docs/antialias_training_cpu.json`",
      f"- tc (60x60 -> 30x30), ST-CNN affine, {'/'.join(map(str, steps))} steps per run",
      "", benchmark.summary(records)])


def training_step():
  import training
  data = _load("training_cpu.json")
  return report.as_markdown(training.table(data["environment"], data["records"]),
                            [f"{report.measured_when(data)}; from `docs/training_cpu.json`"])


def train_loop():
  data = _load("train_loop_cpu.json")
  return report.as_markdown(report.train_loop_table(data),
                            [f"{report.measured_when(data)}; from `docs/train_loop_cpu.json`"])


def ndimage():
  import ndimage as benchmark
  data = _load("ndimage_cpu.json")
  return report.as_markdown(benchmark.table(data["environment"], data["records"]),
                            [f"{report.measured_when(data)}; from `docs/ndimage_cpu.json`"])


# (page, section name, what writes it), in page order.
SECTIONS = (
    (BENCHMARKS_PAGE, "sampler_2d", sampler_2d),
    (BENCHMARKS_PAGE, "sampler_3d", sampler_3d),
    (BENCHMARKS_PAGE, "antialias_costs", antialias_costs),
    (BENCHMARKS_PAGE, "antialias_training", antialias_training),
    (BENCHMARKS_PAGE, "training_step", training_step),
    (BENCHMARKS_PAGE, "train_loop", train_loop),
    (BENCHMARKS_PAGE, "ndimage", ndimage),
    (ANTIALIAS_PAGE, "antialias_errors", antialias_errors),
)


def pages() -> dict:
  """Each page's text with its generated sections rewritten from the JSON."""
  texts = {}
  for page, name, write in SECTIONS:
    text = texts.get(page, page.read_text())
    if report.markers(name)[0] not in text:
      raise ValueError(f"{page.relative_to(REPO)} has no {report.markers(name)[0]} marker")
    texts[page] = report.replaced(text, name, write())
  return texts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a page differs from what it would be")
  args = parser.parse_args(argv)
  stale = []
  for page, text in pages().items():
    if page.read_text() != text:
      stale.append(page)
      if not args.check:
        page.write_text(text)
  for page in stale:
    print(f"{'stale' if args.check else 'rewrote'}: {page.relative_to(REPO)}")
  return 1 if args.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
