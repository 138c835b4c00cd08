#!/usr/bin/env bash
# CI: the declared lower bounds are versions that pass.
#
# Installs stnjax with every direct dependency at the lowest version pyproject.toml allows
# (uv's --resolution lowest-direct; uv installs from PyPI) on the lowest Python it declares
# (requires-python), and runs the core tests (sampling, modules, volumes, ndimage) and
# the trainer's tests. Exits non-zero when the install or a test fails.
#
# The install is made from a copy of the working tree (tracked and untracked files, not
# ignored ones), so it neither reads nor overwrites the compiled kernel or the .venv of
# this checkout.
#
# Options (environment): FLOORS_PYTHON, the interpreter to use (default: found from
# requires-python, on PATH or under pyenv); FLOORS_TESTS, the test files to run;
# PYTEST_ARGS, extra pytest arguments (default: -n 2).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$SECONDS

floor=$(sed -n 's/^requires-python *= *">=\([0-9]*\.[0-9]*\)".*/\1/p' pyproject.toml)
test -n "$floor" || { echo "floors: no requires-python = \">=X.Y\" in pyproject.toml" >&2; exit 1; }
python=${FLOORS_PYTHON:-}
if [ -z "$python" ]; then
  if command -v "python$floor" >/dev/null; then
    python=$(command -v "python$floor")
  else
    pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
    python=$(ls -d "$pyenv_root"/versions/"$floor".*/bin/python 2>/dev/null | sort -V | tail -1 || true)
  fi
fi
test -n "$python" && test -x "$python" \
  || { echo "floors: no Python $floor found (set FLOORS_PYTHON)" >&2; exit 1; }
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
test "$version" = "$floor" \
  || { echo "floors: $python is Python $version, not the declared floor $floor" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/stnjax-floors.XXXXXX")
trap 'rm -rf "$work"' EXIT

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  "$python" -m venv "$work/uv" && "$work/uv/bin/pip" install -q uv
  uv=$work/uv/bin/uv
fi

mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$work/src"

"$uv" venv -q -p "$python" "$work/venv"
export VIRTUAL_ENV=$work/venv
"$uv" pip install -q --resolution lowest-direct -e "$work/src[train,dev]"
echo "floors: Python $version; installed:"
"$uv" pip freeze | grep -iE '^(jax|jaxlib|flax|numpy|scipy|optax|orbax-checkpoint|chex|tensorflow-datasets|array-record|pillow|tqdm|pytest|pytest-xdist|matplotlib|flatbuffers|ml-dtypes|absl-py|etils|tensorstore)=='
echo "floors: CPU kernel built: $("$work/venv/bin/python" -c 'import stnjax; print(stnjax.has_cpu_kernel())')"

cd "$work/src"
# The core tests but composability (which runs on Python 3.11 and 3.13: here it would
# take CI past its time), and the trainer's (optax and orbax at their floors). By hand:
# FLOORS_TESTS="tests/test_composability.py tests/test_train_distorted_mnist.py
# tests/test_train_gtsrb.py".
tests=${FLOORS_TESTS:-"tests/test_sampling.py tests/test_modules.py tests/test_volumes.py
  tests/test_ndimage.py tests/test_transforms.py tests/test_jax_private.py tests/test_trainer.py"}
# shellcheck disable=SC2086  # Word splitting of the lists is wanted.
JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} "$work/venv/bin/python" -m pytest -q -p no:cacheprovider \
  ${PYTEST_ARGS:--n 2} $tests
echo "floors: passed in $((SECONDS - start)) s"
