#!/usr/bin/env bash
# The declared lower bounds, tested (as KubeSpawner's lower-bound job does): every runtime
# requirement of pyproject.toml installed at exactly its `>=` version into .venv-floors (the
# test tools at their newest that fit), then the tests that exercise the spawner and the
# builder against those versions. Reused while pyproject.toml is unchanged.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=.venv-floors
stamp=$venv/.installed

if [ ! -x $venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "test-floors: installing the declared minimum versions into $venv"
  rm -rf $venv
  python3 -m venv $venv
  $venv/bin/pip install -q --upgrade pip
  $venv/bin/python - >$venv/floors.txt <<'PY'
import re, tomllib
# "name[extra]>=1.2,<3  # why" -> "name==1.2": the floor of each runtime requirement
for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*([^;]*)", req)
    floor = re.search(r">=\s*([0-9][^,\s]*)", m.group(3))
    if floor is None:
        raise SystemExit(f"test-floors: {req!r} declares no lower bound")
    print(f"{m.group(1)}=={floor.group(1)}")
PY
  cat $venv/floors.txt
  $venv/bin/pip install -q -c $venv/floors.txt -e '.[test]'
  touch "$stamp"
fi
# the installed versions are the floors (a constraint pip could not honour fails above)
$venv/bin/python - <<'PY'
from importlib.metadata import version
from packaging.requirements import Requirement
for line in open(".venv-floors/floors.txt"):
    req = Requirement(line.strip())
    got = version(req.name)
    assert req.specifier.contains(got), f"{req.name} {got} installed, floor is {req.specifier}"
PY

# The unit tier (the spawner's and builder's pure logic, the upstream surface and the import
# graph) and the spawner's hub tests: a real kube-apiserver and JupyterHub at the floors.
exec $venv/bin/python -m pytest -p no:cacheprovider -q \
  tests/unit \
  tests/integration/test_spawner_hub.py \
  tests/integration/test_profiles_hub.py \
  "$@"
