#!/bin/sh
# aicoe-env: the steps of an aicoe-spawner environment build
set -eu
fail() { echo "aicoe-build-error: $*" >&2; exit 1; }
J=$(command -v jupyterhub-singleuser || true)
PY=""
if [ -n "$J" ] && [ -x "$(dirname "$J")/python" ]; then PY=$(dirname "$J")/python; fi
[ -n "$PY" ] || PY=$(command -v python3 || command -v python || true)
[ -n "$PY" ] || fail "the base image ${AICOE_BASE_IMAGE:-} has no Python (no jupyterhub-singleuser, no python3)"
PFX=$("$PY" -c 'import sys; print(sys.prefix)')
OWNER=$(stat -c %u:%g "$PFX")
T=/tmp/aicoe-tools
export UV_CACHE_DIR=/tmp/aicoe-uv-cache UV_PYTHON_DOWNLOADS=never PIP_NO_CACHE_DIR=1 \
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
as_env() {  # run as the owner of the Python environment (a conda env belongs to the user)
  if [ "$(id -u)" != 0 ] || [ "${OWNER%%:*}" = 0 ]; then "$@"; else
    setpriv --reuid="${OWNER%%:*}" --regid="${OWNER#*:}" --clear-groups -- "$@"; fi
}
tool() {  # install a build tool (micropipenv, uv) from the package index, apart from the env
  rm -rf "$T"
  what=$1  # micropipenv reads TOML with tomllib (Python >= 3.11), else with its toml extra
  if [ "$what" = micropipenv ] && ! "$PY" -c 'import tomllib' 2>/dev/null; then what="micropipenv[toml]"; fi
  "$PY" -m pip install -q --target "$T" "$what" >&2 ||
    fail "cannot install $what from the package index ${PIP_INDEX_URL:-(pip's default)}"
  chmod -R a+rX "$T"
}
pip_install() {  # $1: the file the packages come from; the rest: pip install arguments
  what=$1; shift
  if as_env "$PY" -m pip install "$@" > /tmp/aicoe-pip.log 2>&1; then cat /tmp/aicoe-pip.log; return; fi
  cat /tmp/aicoe-pip.log >&2
  bad=$(grep -A1 'DO NOT MATCH THE HASHES' /tmp/aicoe-pip.log | tail -n 1 | awk '{print $1}')
  [ -z "$bad" ] || fail "$what: the downloaded $bad does not match the hash in the lock (tampered, or published again): lock it again"
  pyv=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  python_hint="name a Python it supports in runtime.txt or .python-version, or pin a version that supports Python $pyv"
  other=$(grep -o "Package '[^']*' requires a different Python: [^ ]* not in '[^']*'" /tmp/aicoe-pip.log |
    head -n 1 || true)
  if [ -n "$other" ]; then  # a distribution whose metadata says Requires-Python
    pkg=${other#"Package '"}; pkg=${pkg%%"'"*}; spec=${other##*" not in '"}; spec=${spec%"'"}
    fail "$what: $pkg needs Python $spec (its Requires-Python) and the image has Python $pyv: $python_hint"
  fi
  missing=$(grep -o 'No matching distribution found for [^ ]*' /tmp/aicoe-pip.log | head -n 1 || true)
  if [ -n "$missing" ]; then
    req=${missing##* }; ver=""
    case "$req" in *==*) ver=${req#*==}; ver=${ver%%[,;]*} ;; esac
    spec=""
    if [ -n "$ver" ]; then  # pip passed over the pinned version for its Requires-Python
      spec=$(grep 'require a different python version' /tmp/aicoe-pip.log | tail -n 1 |
        sed 's/^.*python version: //' | tr ';' '\n' | sed 's/^ *//' |
        awk -v v="$ver" '$1 == v && $2 == "Requires-Python" {sub(/^[^ ]+ Requires-Python /, ""); print; exit}')
    fi
    [ -z "$spec" ] || fail "$what: $req needs Python $spec (its Requires-Python) and the image has Python $pyv: $python_hint"
    fail "$what: $missing on the package index ${PIP_INDEX_URL:-(pip's default)}"
  fi
  said=$(awk '/lines of output\]/ {f=1; next} /\[end of output\]/ {f=0} f && NF {l=$0} END {print l}' \
    /tmp/aicoe-pip.log | sed 's/^ *//' | cut -c 1-200)
  conflict=$(grep -o 'Cannot install .* because these package versions have conflicting dependencies' \
    /tmp/aicoe-pip.log | head -n 1 || true)
  if [ -n "$conflict" ]; then
    causes=$(grep -A 6 'The conflict is caused by:' /tmp/aicoe-pip.log | tail -n +2 |
      grep ' depends on \| requested ' | sed 's/^ *//' | head -n 4 | paste -s -d ';' - | sed 's/;/; /g')
    fail "$what: the pinned versions cannot be installed together (${causes:-see above}): change the pins so that they agree"
  fi
  unbuilt=$(grep -o 'Failed building wheel for [^ ]*' /tmp/aicoe-pip.log | head -n 1 | awk '{print $NF}')
  if [ -n "$unbuilt" ]; then
    hint="pin a version of $unbuilt that has a wheel for Python $pyv"
    case "$said" in *gcc*|*" cc"*|*compiler*|*"Python.h"*|*"g++"*)
      hint="$hint, or add a compiler and the headers it needs to apt.txt (e.g. build-essential)" ;; esac
    fail "$what: $unbuilt has no wheel for Python $pyv and building it from its source failed (${said:-see above}): $hint"
  fi
  if grep -q 'Encountered error while generating package metadata' /tmp/aicoe-pip.log; then
    pkg=$(grep -A 1 'Encountered error while generating package metadata' /tmp/aicoe-pip.log |
      tail -n 1 | awk '{print $NF}')
    fail "$what: ${pkg:-a package} could not be prepared from its source (${said:-see above}); it may not support Python $pyv: pin a version that does"
  fi
  fail "$what: pip could not install it: $(grep -E '^(ERROR|error):' /tmp/aicoe-pip.log | tail -n 1)"
}
# what a lock names that pip cannot hash-check: VCS and URL entries (installed without a hash,
# said in the log) and local paths (installed after the repository is copied: the deferred step)
DEFER=${AICOE_DEFERRED:-/usr/local/share/aicoe-spawner/deferred-requirements.txt}
locked_install() {  # $1: the lock (for messages), $2: the requirements exported from it
  rm -f /tmp/aicoe-hashed.txt /tmp/aicoe-unhashed.txt "$DEFER"
  mkdir -p "$(dirname "$DEFER")"
  awk -v hashed=/tmp/aicoe-hashed.txt -v unhashed=/tmp/aicoe-unhashed.txt -v local="$DEFER" '
    { line = line $0 }
    /\\$/ { sub(/\\$/, "", line); next }
    { l = line; line = ""; sub(/^[ \t]+/, "", l) }
    l == "" || l ~ /^#/ { next }
    l ~ /--hash=/ { print l > hashed; next }
    l ~ /^(-e|--editable)[ =]/ || l ~ /^(\.|\/|file:)/ { print l > local; next }
    { print l > unhashed }' "$2"
  [ ! -s /tmp/aicoe-hashed.txt ] ||
    pip_install "$1" --no-deps --require-hashes -r /tmp/aicoe-hashed.txt
  if [ -s /tmp/aicoe-unhashed.txt ]; then
    echo "$1: without a hash check (the lock has none for them): $(paste -s -d ' ' /tmp/aicoe-unhashed.txt)" >&2
    pip_install "$1" --no-deps -r /tmp/aicoe-unhashed.txt
  fi
  [ ! -s "$DEFER" ] || echo "$1: after the repository is copied: $(paste -s -d ' ' "$DEFER")" >&2
  rm -f /tmp/aicoe-hashed.txt /tmp/aicoe-unhashed.txt
}
step=$1; f=$2; shift 2
d=$(dirname "$f")
r=${f#"${AICOE_HOME:-/}/"}  # the path in the repository, for messages
case "$step" in
python)
  got=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$got" = "$1" ] || fail "$r asks for Python $1, but the base image ${AICOE_BASE_IMAGE:-} has Python $got (the builder's python_base_images maps $1 to it)" ;;
apt)
  o="-o APT::Update::Error-Mode=any"  # a source that fails fails the update
  if [ -s /tmp/aicoe-apt.list ]; then  # the builder's sources instead of the image's
    o="$o -o Dir::Etc::sourcelist=/tmp/aicoe-apt.list -o Dir::Etc::sourceparts=/dev/null"; fi
  apt-get $o update -q > /tmp/aicoe-apt.log 2>&1 || { cat /tmp/aicoe-apt.log >&2;
    fail "$r: apt-get update failed: $(grep -E '^(E|W):' /tmp/aicoe-apt.log | head -n 1)"; }
  DEBIAN_FRONTEND=noninteractive apt-get $o install -y -q --no-install-recommends "$@" \
    > /tmp/aicoe-apt.log 2>&1 || { cat /tmp/aicoe-apt.log >&2;
    fail "$r: apt-get could not install it: $(grep '^E:' /tmp/aicoe-apt.log | head -n 1)"; }
  cat /tmp/aicoe-apt.log
  rm -rf /var/lib/apt/lists/* /tmp/aicoe-apt.list /tmp/aicoe-apt.log ;;
conda)
  c=""
  for x in mamba micromamba conda; do command -v "$x" >/dev/null 2>&1 && { c=$x; break; }; done
  [ -n "$c" ] || fail "$r needs conda or mamba, and the base image ${AICOE_BASE_IMAGE:-} has neither: use requirements.txt, or a base image with conda (quay.io/jupyter/minimal-notebook)"
  as_env "$c" env update -p "$PFX" -f "$f" || fail "$r: $c env update failed (see above)"
  as_env "$c" clean -afy >/dev/null 2>&1 || true ;;
pipenv)
  tool micropipenv
  cd "$d"
  if [ -f Pipfile ]; then
    PYTHONPATH=$T "$PY" -m micropipenv verify --method pipenv ||
      fail "$r is out of date with Pipfile, or needs another Python: run \`pipenv lock\` and commit Pipfile.lock"
  fi
  PYTHONPATH=$T "$PY" -m micropipenv requirements --method pipenv --no-indexes --no-dev > /tmp/aicoe-req.txt ||
    fail "$r cannot be read by micropipenv (see above)"
  locked_install "$r" /tmp/aicoe-req.txt
  rm -rf "$T" /tmp/aicoe-req.txt ;;
poetry|poetry-export)  # poetry.lock and the pyproject.toml beside it, exported by micropipenv
  tool micropipenv
  cd "$d"
  out=${1:-/tmp/aicoe-req.txt}  # poetry-export: where the requirements go
  PYTHONPATH=$T "$PY" -m micropipenv verify --method poetry > /tmp/aicoe-verify.log 2>&1 || {
    cat /tmp/aicoe-verify.log >&2
    if grep -q 'does not correspond to hash' /tmp/aicoe-verify.log; then
      fail "$r is out of date with pyproject.toml (its content-hash differs): run \`poetry lock\` and commit poetry.lock"; fi
    fail "$r: $(grep -v '^ ' /tmp/aicoe-verify.log | grep . | tail -n 1)"; }
  # micropipenv tells a package's group from its `category` (Poetry < 1.5) or else guesses
  # it from pyproject.toml's [tool.poetry] tables, in an order that can lose a main package
  # (one also named by a dev group) and that misses Poetry 2's [project] table: a copy of the
  # lock says each package's category as the lock knows it (its `groups`, Poetry >= 2), or
  # as the main dependencies reach it (Poetry 1.5-1.8)
  w=/tmp/aicoe-poetry; rm -rf "$w"; mkdir -p "$w"; cp pyproject.toml "$w/pyproject.toml"
  PYTHONPATH=$T "$PY" - "$f" pyproject.toml "$w/poetry.lock" <<'PY' || fail "$r cannot be read (see above)"
import re, sys
try:
    import tomllib as t
except ImportError:  # Python < 3.11: micropipenv[toml]'s toml
    import toml as t
text = open(sys.argv[1], encoding="utf-8").read()
lock, pyproject = t.loads(text), t.loads(open(sys.argv[2], encoding="utf-8").read())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
packages = {norm(p["name"]): p for p in lock.get("package", [])}
if any("groups" in p for p in packages.values()):
    main = {n for n, p in packages.items() if "main" in p.get("groups", [])}
else:
    project, poetry = pyproject.get("project") or {}, (pyproject.get("tool") or {}).get("poetry") or {}
    todo = [norm(n) for n in poetry.get("dependencies") or {} if n != "python"]
    todo += [norm(m[1]) for s in project.get("dependencies") or []
             if (m := re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", s))]
    main = set()
    while todo:
        n = todo.pop()
        if n in packages and n not in main:
            main.add(n)
            todo += [norm(d) for d in packages[n].get("dependencies") or {}]
out, previous = [], ""
for line in text.splitlines(keepends=True):
    out.append(line)
    if previous.strip() == "[[package]]" and line.startswith("name = "):
        if not any("category" in p for p in packages.values()):
            out.append('category = "%s"\n' % ("main" if norm(t.loads(line)["name"]) in main else "dev"))
    previous = line
open(sys.argv[3], "w", encoding="utf-8").write("".join(out))
PY
  (cd "$w" && PYTHONPATH=$T "$PY" -m micropipenv requirements --method poetry --no-indexes --no-dev) \
    > "$out" || fail "$r cannot be read by micropipenv (see above)"
  rm -rf "$T" "$w" /tmp/aicoe-verify.log
  [ "$step" = poetry-export ] || { locked_install "$r" "$out"; rm -f "$out"; } ;;
uv)
  tool uv
  cd "$d"
  "$T/bin/uv" export --frozen --no-dev --no-emit-project --format requirements-txt \
    -o /tmp/aicoe-req.txt >&2 || fail "$r cannot be exported by uv (see above)"
  locked_install "$r" /tmp/aicoe-req.txt
  rm -rf "$T" /tmp/aicoe-req.txt "$UV_CACHE_DIR" ;;
pylock)
  tool uv
  as_env "$T/bin/uv" pip install --python "$PY" -r "$f" || fail "$r: uv could not install it (see above)"
  rm -rf "$T" "$UV_CACHE_DIR" ;;
requirements)
  cd "$d"
  pip_install "$r" -r "$f" ;;
locked)  # the requirements $f exported from the lock $1 (what pipenv and uv do after exporting)
  locked_install "$1" "$f" ;;
deferred)  # the lock's local paths, now that the repository is there
  cd "$d"
  [ ! -s "$DEFER" ] || pip_install "$r" --no-deps -r "$DEFER"
  rm -f "$DEFER" ;;
project)
  cd "$d"
  if [ "${1:-}" = --optional ]; then  # a locked project's own code: its lock has the packages
    shift
    if as_env "$PY" -m pip install "$@" . > /tmp/aicoe-pip.log 2>&1; then cat /tmp/aicoe-pip.log; else
      cat /tmp/aicoe-pip.log >&2
      echo "$r: the project itself is not installed (it cannot be built, see above); the packages its lock pins are, and its files are in the home folder. If it is not a package, say so with package-mode = false in [tool.poetry]" >&2
    fi
    rm -f /tmp/aicoe-pip.log
  else
    pip_install "$r" "$@" .
  fi ;;
postbuild)
  chmod +x "$f" 2>/dev/null || true
  rc=0; "$f" || rc=$?
  [ "$rc" = 0 ] || fail "$r exited with code $rc (see the lines above)" ;;
home)  # the home folder writable by the notebook user and by any uid of group 0 (OpenShift)
  chgrp -R 0 "$f" && chmod -R g=u "$f" ;;
*) fail "unknown step $step" ;;
esac
