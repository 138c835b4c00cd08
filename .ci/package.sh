#!/usr/bin/env bash
# CI: the package installs. `python -m build` makes an sdist and a wheel; each installs in
# a clean virtual environment, and the sdist also where no C++ compiler works (the CPU
# kernel is optional: stnjax.has_cpu_kernel() is then False). In each, stnjax imports,
# reports the one version number, and samples an image. Also checks what the sdist and
# the wheel hold. Exits non-zero on any failure.
#
# Builds from a copy of the working tree (tracked and untracked files, not ignored ones),
# so the build reads nothing this checkout has built. Options (environment): PYTHON, the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
python=${PYTHON:-python3}

work=$(mktemp -d "${TMPDIR:-/tmp}/stnjax-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$work/src"

"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build uv >"$work/tools.log" 2>&1 || { cat "$work/tools.log"; exit 1; }
uv=$work/tools/bin/uv
export PATH=$work/tools/bin:$PATH  # build's --installer=uv finds uv here.

echo "package: building the sdist and, from it, the wheel"
"$work/tools/bin/python" -m build --installer=uv -o "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/stnjax-*.tar.gz)
wheel=$(ls "$work"/dist/stnjax-*.whl)
echo "package: $(basename "$sdist") $(basename "$wheel")"

# What each holds.
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$work/sdist.txt"
"$work/tools/bin/python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | sort >"$work/wheel.txt"
for needed in pyproject.toml setup.py README.md CHANGELOG.md stnjax/__init__.py stnjax/py.typed \
    stnjax/_native/bilinear.cc stnjax/_native/parallel.h; do
  grep -qx "$needed" "$work/sdist.txt" || { echo "package: the sdist lacks $needed" >&2; exit 1; }
done
if [ -e LICENSE ]; then
  grep -qx LICENSE "$work/sdist.txt" || { echo "package: the sdist lacks LICENSE" >&2; exit 1; }
fi
grep -qx 'stnjax/py.typed' "$work/wheel.txt" || { echo "package: the wheel lacks py.typed" >&2; exit 1; }
grep -q '^stnjax/_cpu_kernels\..*\.so$' "$work/wheel.txt" \
  || { echo "package: the wheel lacks the compiled CPU kernel" >&2; exit 1; }
stray=$(grep -vE '^(stnjax/|stnjax-[^/]*\.dist-info/)' "$work/wheel.txt" \
  ; grep -E '^stnjax/_native/|\.(cc|h)$' "$work/wheel.txt" || true)
test -z "$stray" || { echo "package: the wheel holds files it should not:" >&2; echo "$stray" >&2; exit 1; }
stray=$(grep -E '^(tests|train|benchmarks|docs|scripts|examples)/|\.so$' "$work/sdist.txt" || true)
test -z "$stray" || { echo "package: the sdist holds files it should not:" >&2; echo "$stray" >&2; exit 1; }

# Installs `$2` in a clean environment `$1` and checks stnjax there; `$3`: whether the CPU
# kernel is expected. Further arguments: environment settings for the install.
check() {
  local name=$1 target=$2 kernel=$3
  shift 3
  "$uv" venv -q -p "$python" "$work/$name"
  env "$@" VIRTUAL_ENV="$work/$name" "$uv" pip install -q --refresh-package stnjax "$target" \
    >"$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
  (cd "$work" && JAX_PLATFORMS=cpu "$work/$name/bin/python" - "$kernel" <<'EOF'
import importlib.metadata
import sys

import jax
import jax.numpy as jnp

import stnjax

assert stnjax.__version__ == importlib.metadata.version("stnjax"), (
    stnjax.__version__, importlib.metadata.version("stnjax"))
assert "site-packages" in stnjax.__file__, stnjax.__file__
want = sys.argv[1] == "True"
assert stnjax.has_cpu_kernel() == want, (stnjax.has_cpu_kernel(), want)
image = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)
theta = jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3))
out = stnjax.sample(theta, image, (4, 5))
assert jnp.allclose(out, image, atol=1e-4), float(jnp.abs(out - image).max())
if want:  # The kernel runs on this jaxlib: the image gradient of a sum, one per use.
  grad = jax.grad(lambda i: stnjax.sample(theta, i, (4, 5), implementation="cpu_kernel").sum())
  assert jnp.allclose(grad(image), 1.0, atol=1e-4)
print(f"stnjax {stnjax.__version__}: imports, samples; CPU kernel: {stnjax.has_cpu_kernel()}")
EOF
  ) | sed "s/^/package: $name: /"
}

check wheel "$wheel" True
check sdist "$sdist" True
# A copy at another path, so that uv builds it afresh rather than reusing the wheel it
# built (and cached) from the sdist above.
mkdir "$work/no-compiler" && cp "$sdist" "$work/no-compiler/"
check sdist-no-compiler "$work/no-compiler/$(basename "$sdist")" False CC=false CXX=false LDSHARED=false
echo "package: passed in $((SECONDS - start)) s"
