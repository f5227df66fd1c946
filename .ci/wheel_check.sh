#!/usr/bin/env bash
# The wheel as a user gets it: build it (sdist, then the wheel from the sdist, as `python -m build`
# does), check its file list against the tree, install it into a fresh venv with the extras the README
# names, and from an empty folder run `weaktr --help` and a small `weaktr run demo`.
# Fails on a setuptools deprecation warning in the build, a file missing from the wheel, an import
# that resolves to the source tree, or a demo without summary.json and report/index.html.
# Usage: bash .ci/wheel_check.sh   (PYTHON=python3.11 to pick the interpreter). 2.2 min on an idle
# 2-core machine, 10 min under a load of 11; most of it is pip unpacking torch and its CUDA
# libraries (5.5 GB) into the new venv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
BUILD_VERSION=1.6.1 # pypa/build

WORK=$(mktemp -d "${TMPDIR:-/tmp}/weaktr-wheel-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH # the installed wheel alone, never the source tree

START=$SECONDS
step() { echo "wheel check [$((SECONDS - START)) s]: $1"; }
fail() { # message [log]: the log's tail, then the message, and stop
    if [ -n "${2:-}" ]; then tail -40 "$2"; fi
    echo "wheel check: FAILED: $1" >&2
    exit 1
}

step "building the sdist and wheel with build==$BUILD_VERSION"
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/python" -m pip install --quiet "build==$BUILD_VERSION"
"$WORK/build-env/bin/python" -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 ||
    fail "the build failed" "$WORK/build.log"
if grep -i -n "deprecat" "$WORK/build.log"; then fail "the build printed the deprecation warnings above"; fi
WHEEL=$(echo "$WORK"/dist/weaktr-*.whl)
test -f "$WHEEL"
echo "wheel check: built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

step "checking the wheel's file list"
"$WORK/build-env/bin/python" "$REPO/.ci/wheel_contents.py" "$WHEEL" --repo "$REPO"

step "installing the wheel with [crf,viz] into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet "$WHEEL[crf,viz]"
BIN=$WORK/venv/bin

step "running weaktr from an empty folder"
RUN=$WORK/empty
mkdir "$RUN"
cd "$RUN"
where=$("$BIN/python" -c "import weaktr; print(weaktr.__file__)")
case $where in
"$WORK/venv/"*) ;;
*) fail "weaktr imports from $where, not from the new venv" ;;
esac
"$BIN/weaktr" --help >"$WORK/help.txt" 2>&1 || fail "weaktr --help failed" "$WORK/help.txt"
grep -q "^usage: weaktr" "$WORK/help.txt" || fail "weaktr --help printed no usage line" "$WORK/help.txt"
mapfile -t OVERRIDES < <(grep -v -e '^#' -e '^$' "$REPO/.ci/wheel_demo_overrides.txt")
"$BIN/weaktr" run demo "${OVERRIDES[@]}" >"$WORK/demo.log" 2>&1 || fail "weaktr run demo failed" "$WORK/demo.log"
for artefact in runs/demo/summary.json runs/demo/report/index.html; do
    [ -s "$artefact" ] || fail "weaktr run demo left no $artefact" "$WORK/demo.log"
done
"$BIN/python" -c "import json, sys; json.load(open(sys.argv[1]))['stage_seconds']" runs/demo/summary.json ||
    fail "runs/demo/summary.json holds no stage_seconds"
grep -q "<html" runs/demo/report/index.html || fail "runs/demo/report/index.html is no HTML page"
echo "wheel check: passed in $((SECONDS - START)) s"
