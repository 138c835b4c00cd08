"""The sampler's default path against an earlier revision's, timed in turns in one run.

    python benchmarks/against_release.py                     # against a9b2363
    python benchmarks/against_release.py --revision REV --implementation xla
    python benchmarks/against_release.py --revision REV --dims 3 --modes grad_theta_image

The earlier revision's `stnjax/` is taken from git (`git archive`) into a temporary
folder as the package `stnjax_release` (its compiled kernel is not built there, so
compare its XLA path: `--implementation xla`, the default). Both run in this process
with the same inputs as `benchmarks/sampler.py`, PyTorch beside them when installed;
the ratio column is the earlier time over the current one (above 1: faster now).
"""

import argparse
import functools
import io
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sampler  # noqa: E402

import stnjax  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def import_revision(revision, folder):
  """Imports `stnjax/` at `revision` as the package `stnjax_release`."""
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "stnjax"],
                           capture_output=True, check=True).stdout
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    tar.extractall(folder, filter="data")
  package = pathlib.Path(folder) / "stnjax_release"
  (pathlib.Path(folder) / "stnjax").rename(package)
  for path in package.rglob("*.py"):
    text = re.sub(r"\bfrom stnjax\b", "from stnjax_release", path.read_text())
    # Its FFI target names must not clash with the current package's.
    text = text.replace('"stnjax_', '"stnjax_release_').replace('"stnjax._cpu_kernels"',
                                                                '"stnjax_release._cpu_kernels"')
    path.write_text(text)
  sys.path.insert(0, folder)
  import stnjax_release
  return stnjax_release


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--revision", default="a9b2363")
  parser.add_argument("--implementation", default="xla",
                      help="the earlier revision's implementation option")
  parser.add_argument("--modes", nargs="+", choices=sampler.MODES,
                      default=["forward", "grad_theta"])
  parser.add_argument("--repeats", type=int, default=21)
  parser.add_argument("--dims", type=int, choices=(2, 3), default=None,
                      help="only the image (2) or volume (3) cases")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as folder:
    release = import_revision(args.revision, folder)
    earlier = functools.partial(release.sample, implementation=args.implementation)
    print(f"stnjax (current defaults) against {args.revision} "
          f"(implementation={args.implementation!r}); median ms; ratio = earlier / current\n")
    print("| shape | mode | torch | earlier | current | ratio |\n|---|---|---|---|---|---|")
    for case in sampler.CASES:
      if args.dims is not None and len(case.spatial) != args.dims:
        continue
      inputs = sampler.make_inputs(case)
      for mode in args.modes:
        runners = {"earlier": sampler.jax_runner(earlier, case, mode, inputs),
                   "current": sampler.jax_runner(stnjax.sample, case, mode, inputs)}
        try:
          runners["torch"] = sampler.torch_runner(case, mode, inputs)
        except ImportError:
          pass
        seconds = sampler.median_seconds_in_turns(runners, 3, args.repeats)
        torch_ms = f"{seconds['torch'] * 1e3:.2f}" if "torch" in seconds else "-"
        print(f"| {case.label} | {mode} | {torch_ms} | {seconds['earlier'] * 1e3:.2f} | "
              f"{seconds['current'] * 1e3:.2f} | {seconds['earlier'] / seconds['current']:.2f}x |",
              flush=True)


if __name__ == "__main__":
  main()
