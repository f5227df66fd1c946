#!/usr/bin/env bash
# The wheel as a user gets it: build it (sdist, then the wheel from the sdist, as `python -m build`
# does), check its file list against the tree, and install it into a fresh venv at the versions of
# requirements.lock (as constraints). First bare, as `pip install weaktr` leaves it: from an empty
# folder `weaktr --help` and `weaktr run --help` work, and each command that needs a missing extra
# stops at once with exit code 2 and one line naming its `pip install 'weaktr[EXTRA]'`. Then the
# extras the README names go into the same venv (one torch install, not two) for a small `weaktr run
# demo`.
# Fails on a setuptools deprecation warning in the build, a file missing from the wheel, an import
# that resolves to the source tree, a bare install that cannot start or misses an extra's message,
# or a demo without summary.json and report/index.html.
# Usage: bash .ci/wheel_check.sh   (PYTHON=python3.11 to pick the interpreter). 2.2 min on an idle
# 2-core machine before the bare-install checks (they add about 10 s), 3.3 min under a load of 5,
# 10 min under a load of 11; most of it is pip unpacking torch and its CUDA libraries (5.5 GB) into
# the new venv, and about a minute more goes to deleting them at the end.
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

step "installing the bare wheel (no extras) into a fresh venv, at the lock's versions"
LOCK=$REPO/requirements.lock
"$PYTHON" -m venv "$WORK/venv"
BIN=$WORK/venv/bin
"$BIN/python" -m pip install --quiet -c "$LOCK" "$WHEEL"

step "running the bare install from an empty folder"
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
"$BIN/weaktr" run --help >"$WORK/help.txt" 2>&1 || fail "weaktr run --help failed" "$WORK/help.txt"
grep -q "^usage: weaktr run" "$WORK/help.txt" || fail "weaktr run --help printed no usage line" "$WORK/help.txt"

mapfile -t OVERRIDES < <(grep -v -e '^#' -e '^$' "$REPO/.ci/wheel_demo_overrides.txt")
needs_extra() { # EXTRA ARGS...: `weaktr ARGS` without EXTRA gives exit 2 and one stderr line naming it
    local extra=$1 rc=0
    shift
    "$BIN/weaktr" "$@" >"$WORK/extra.out" 2>"$WORK/extra.err" || rc=$?
    [ "$rc" -eq 2 ] || fail "weaktr $1 without the $extra extra exited with $rc, not 2" "$WORK/extra.err"
    [ "$(wc -l <"$WORK/extra.err")" -eq 1 ] ||
        fail "weaktr $1 without the $extra extra printed more than one line to stderr" "$WORK/extra.err"
    grep -qF "pip install 'weaktr[$extra]'" "$WORK/extra.err" ||
        fail "weaktr $1 without the $extra extra does not say pip install 'weaktr[$extra]'" "$WORK/extra.err"
    echo "wheel check: weaktr $1 without $extra: $(cat "$WORK/extra.err")"
}
needs_extra viz report "$WORK/no-run"
needs_extra onnx export-model "$WORK/no-run"
# the demo's seeds use the CRF: the run must refuse before its first stage, which would log to stderr
needs_extra crf run demo --run-dir "$WORK/crf-run" "${OVERRIDES[@]}"

step "adding the extras [crf,viz] to the same venv"
"$BIN/python" -m pip install --quiet -c "$LOCK" "${WHEEL}[crf,viz]"

step "running weaktr run demo from the empty folder"
"$BIN/weaktr" run demo "${OVERRIDES[@]}" >"$WORK/demo.log" 2>&1 || fail "weaktr run demo failed" "$WORK/demo.log"
for artefact in runs/demo/summary.json runs/demo/report/index.html; do
    [ -s "$artefact" ] || fail "weaktr run demo left no $artefact" "$WORK/demo.log"
done
"$BIN/python" -c "import json, sys; json.load(open(sys.argv[1]))['stage_seconds']" runs/demo/summary.json ||
    fail "runs/demo/summary.json holds no stage_seconds"
grep -q "<html" runs/demo/report/index.html || fail "runs/demo/report/index.html is no HTML page"
echo "wheel check: passed in $((SECONDS - START)) s"
