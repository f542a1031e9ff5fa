"""The check every built image passes before it is offered, and the report it leaves.

In the build pod, after ``buildah bud`` and before the image is archived, :data:`CHECK_SCRIPT`
runs the built image (chroot isolation, no capabilities, as the RUN steps run) twice:

- as the image's own user, :data:`PROBE` (shell, in the image) states facts: the user's uid and
  home, whether ``jupyterhub-singleuser --version`` runs, whether the home is writable, and,
  with the Python that runs ``jupyterhub-singleuser``, :data:`REPORT_PY`: the jupyterhub,
  jupyterlab and jupyter_server versions, whether they import, and the report (``Python``,
  ``JupyterLab``, ``JupyterHub`` versions and the top-level packages, capped in size);
- as an arbitrary uid in group 0 (as OpenShift runs notebooks), whether it can write the home.

The build script turns the facts into one message a data scientist can act on (what is missing,
how to add it) and fails the build with it (the record's message); a passing image's report is
written to the workspace, the push step puts it into its termination message after the digest,
and :func:`parse_termination` reads it back. Everything the image printed is untrusted data:
the digest is only ever read from the fixed prefix the push step writes, and the lists are
validated and capped here. Pure code, no I/O."""

from __future__ import annotations

import json
import re
from typing import Any

#: The uid the home folder must also be writable by (with gid 0): OpenShift's restricted SCC
#: runs containers as an arbitrary uid of the namespace's range, in group 0.
ANY_UID = 1000660000
#: The report's size in bytes (the push step's termination message holds at most 4096).
REPORT_BUDGET = 3500
MAX_SOFTWARE = 10
MAX_DEPENDENCIES = 200

# In the image, as its user: facts as key=value lines. $1 is REPORT_PY.
PROBE = r"""
report_py=${1:-}
set -f
echo "uid=$(id -u 2>/dev/null)"
echo "home=${HOME:-}"
h=${HOME:-}
if [ -n "$h" ] && [ -d "$h" ]; then
  f="$h/.aicoe-check-$$"
  if ( : > "$f" ) 2>/dev/null; then rm -f "$f"; echo "home_writable=yes"; fi
fi
s=$(command -v jupyterhub-singleuser 2>/dev/null) || exit 0
echo "singleuser=$s"
if out=$("$s" --version 2>&1); then echo "singleuser_runs=yes"; fi
printf 'singleuser_says=%s\n' "$(printf '%s' "$out" | tail -n 1 | cut -c 1-200)"
py=""
IFS= read -r line < "$s" || true
case "$line" in
  "#!"*)
    set -- ${line#??}
    if [ "${1:-}" = /usr/bin/env ]; then py=$(command -v "${2:-}" 2>/dev/null || true);
    else py=${1:-}; fi ;;
esac
[ -n "$py" ] && [ -x "$py" ] || py=$(dirname "$s")/python
[ -x "$py" ] || py=$(command -v python3 2>/dev/null || true)
[ -n "$py" ] || exit 0
echo "python_path=$py"
"$py" -c "$report_py" 2>/dev/null || true
"""

# In the image, with the server's Python: versions, imports and the report (one JSON line).
REPORT_PY = r"""
import json, platform, re
from importlib import metadata as m
def ver(n):
    try:
        return m.version(n)
    except Exception:
        return ""
for n in ("jupyterhub", "jupyterlab", "jupyter_server"):
    print(n + "=" + ver(n))
    try:
        __import__(n)
        print("import_" + n + "=yes")
    except Exception:
        pass
print("python=" + platform.python_version())
software = [{"name": "Python", "version": platform.python_version()}]
software += [{"name": k, "version": ver(n)} for k, n in (("JupyterLab", "jupyterlab"),
             ("JupyterHub", "jupyterhub")) if ver(n)]
try:
    from packaging.requirements import Requirement
except Exception:
    Requirement = None
def canon(n):
    return re.sub(r"[-_.]+", "-", n).lower()
def needed(text):
    # the name a Requires-Dist line requires, unless only for an extra or another platform
    if Requirement is not None:
        try:
            r = Requirement(text)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                return None
            return canon(r.name)
        except Exception:
            pass
    if ";" in text and "extra" in text.split(";", 1)[1]:
        return None
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    return canon(found.group(1)) if found else None
dists = {}
for d in m.distributions():
    name = d.metadata["Name"] or ""
    if name and canon(name) not in dists:
        dists[canon(name)] = (name, d.version or "", d.requires or [])
required = {needed(r) for _, _, reqs in dists.values() for r in reqs}
deps = sorted(({"name": n[:100], "version": v[:60]} for key, (n, v, _) in dists.items()
               if key not in required), key=lambda p: p["name"].lower())
report = {"software": software, "dependencies": deps}
while len(json.dumps(report, separators=(",", ":"))) > BUDGET and deps:
    deps.pop()
print("report=" + json.dumps(report, separators=(",", ":")))
""".replace("BUDGET", str(REPORT_BUDGET))

# The decision on the facts in "$work/check" (PROBE's output): every problem with its fix, in
# one fail(). Facts are read with `case` (data only, never a program). Needs fail(), $work,
# $HUB_VERSION and any_uid_writes HOME (can an arbitrary uid in group 0 write there?).
DECIDE = r"""uid= home= home_writable= singleuser= singleuser_runs= singleuser_says= python_path=
jupyterhub= jupyterlab= jupyter_server= import_jupyterlab= import_jupyter_server= python=
report=
while IFS= read -r line; do
  case "$line" in
    uid=*) uid=${line#*=} ;;
    home=*) home=${line#*=} ;;
    home_writable=*) home_writable=${line#*=} ;;
    singleuser=*) singleuser=${line#*=} ;;
    singleuser_runs=*) singleuser_runs=${line#*=} ;;
    singleuser_says=*) singleuser_says=${line#*=} ;;
    python_path=*) python_path=${line#*=} ;;
    python=*) python=${line#*=} ;;
    jupyterhub=*) jupyterhub=${line#*=} ;;
    jupyterlab=*) jupyterlab=${line#*=} ;;
    jupyter_server=*) jupyter_server=${line#*=} ;;
    import_jupyterlab=*) import_jupyterlab=${line#*=} ;;
    import_jupyter_server=*) import_jupyter_server=${line#*=} ;;
    report=*) report=${line#*=} ;;
  esac
done < "$work/check"
hubv=${HUB_VERSION:-}
hubmajor=${hubv%%.*}
case "$hubmajor" in ''|*[!0-9]*) hubmajor= ;; esac
if [ -n "$hubmajor" ]; then pin="jupyterhub==$hubmajor.*" pinned="jupyterhub==$hubv";
else pin="jupyterhub" pinned="jupyterhub"; fi
how="add \`$pin\` to requirements.txt (or \`RUN pip install $pinned\` to the Dockerfile)"
problems=""
problem() { problems="$problems
- $*"; }
if [ "$uid" = 0 ]; then
  problem "the image runs as root (uid 0), and the notebook server refuses to start as \
root: end the Dockerfile with \`USER 1000\` (the notebook user, e.g. jovyan)"
fi
if [ -z "$singleuser" ]; then
  problem "the image has no jupyterhub-singleuser, the program JupyterHub starts: $how"
elif [ "$singleuser_runs" != yes ]; then
  problem "\`jupyterhub-singleuser --version\` fails in the image ($singleuser_says): $how"
fi
if [ -n "$singleuser" ] && [ -n "$hubmajor" ] && [ -n "$jupyterhub" ]; then
  case "$jupyterhub" in
    "$hubmajor".*|"$hubmajor") ;;
    *) problem "the image has JupyterHub $jupyterhub, this hub runs JupyterHub $hubv, and \
their major versions must match: $how" ;;
  esac
fi
if [ -n "$singleuser" ] && [ "$import_jupyterlab" != yes ] \
    && [ "$import_jupyter_server" != yes ]; then
  problem "the image has no JupyterLab (\`import jupyterlab\` fails in \
${python_path:-its Python}): add \`jupyterlab\` to requirements.txt (or \
\`RUN pip install jupyterlab\` to the Dockerfile)"
fi
if [ -z "$home" ] || [ "$home" = / ]; then
  problem "the image has no home folder for its user (HOME is '${home}'): set one, e.g. \
\`ENV HOME=/home/jovyan\` and \`WORKDIR /home/jovyan\`"
elif [ "$home_writable" != yes ]; then
  problem "the home folder $home is not writable by the image's user (uid $uid): in the \
Dockerfile, as root, \`RUN chown -R $uid $home\` (or \`COPY --chown=$uid ...\`)"
elif ! any_uid_writes "$home"; then
  problem "the home folder $home is not writable by an arbitrary user in group 0, as \
OpenShift runs notebooks: in the Dockerfile, as root, \
\`RUN chgrp -R 0 $home && chmod -R g=u $home\`"
fi
if [ -n "$problems" ]; then
  fail "the image cannot be offered as a notebook:$problems"
fi
echo "==> checked: jupyterhub-singleuser $jupyterhub (this hub: ${hubv:-not known}), \
JupyterLab ${jupyterlab:-none} (jupyter_server $jupyter_server), Python $python, home $home"
"""

# In the build step (after `buildah bud`): the check of aicoe-build/image. Uses $B, $work and
# fail() of BUILD_SCRIPT.
CHECK_SCRIPT = (
    (
        r"""if [ "${CHECK_IMAGE:-true}" = true ]; then
echo "==> checking the image: jupyterhub-singleuser, JupyterLab, a writable home folder"
ctr=$(buildah $B from -q aicoe-build/image)
check_run() { timeout 600 buildah $B run --isolation chroot --cap-drop=all "$@"; }
if ! check_run "$ctr" -- /bin/sh -c "$CHECK_PROBE" sh "$CHECK_REPORT" \
    > "$work/check" 2> "$work/check.err"; then
  cat "$work/check.err" >&2
  fail "the image cannot run /bin/sh as its user, so it can neither be checked nor start a \
notebook server: build it FROM a notebook image (e.g. quay.io/jupyter/minimal-notebook)"
fi
any_uid_writes() {
  check_run --user "$ANY_UID:0" "$ctr" -- /bin/sh -c \
    ': > "$1/.aicoe-check-any-uid" && rm -f "$1/.aicoe-check-any-uid"' sh "$1" >/dev/null 2>&1
}
"""
        + DECIDE
        + r"""buildah $B rm "$ctr" >/dev/null 2>&1 || true
rm -f "$WORKSPACE/image-report.json"
case "$report" in
  "{"*"}") if [ "$(printf '%s' "$report" | wc -c)" -le $REPORT_BUDGET ]; then
      printf '%s' "$report" > "$WORKSPACE/image-report.json"; fi ;;
esac
fi
"""
    )
    .replace("$REPORT_BUDGET", str(REPORT_BUDGET))
    .replace("$ANY_UID", str(ANY_UID))
)

# OpenShift's build controller runs a BuildConfig's postCommit hook in a container of the built
# image before pushing it: the same probe and decision, in place ($1 PROBE, $2 REPORT_PY, $3
# the hub's version); a failure fails the Build (PostCommitHookFailed), the reason in its log.
# The arbitrary uid is not tried there (the hook runs as OpenShift runs the build).
OPENSHIFT_HOOK = (
    r"""set -eu
fail() { printf 'error: %s\n' "$*" >&2; exit 2; }
echo "==> checking the image: jupyterhub-singleuser, JupyterLab, a writable home folder"
work=$(mktemp -d)
/bin/sh -c "$1" sh "$2" > "$work/check" 2>/dev/null || true
HUB_VERSION=${3:-}
any_uid_writes() { return 0; }
"""
    + DECIDE
)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PREFIX = re.compile(r'\{"digest":"(sha256:[0-9a-f]{64})"[,}]')
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+ -]{0,99}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,63}")

Packages = tuple[tuple[str, str], ...]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def packages(value: Any, limit: int) -> Packages:
    """The valid ``{"name", "version"}`` entries of ``value`` (at most ``limit``)."""
    out: list[tuple[str, str]] = []
    for entry in value if isinstance(value, list) else []:
        if not isinstance(entry, dict):
            continue
        name, version = entry.get("name"), entry.get("version")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            continue
        if not isinstance(version, str) or not (version == "" or _VERSION.fullmatch(version)):
            continue
        out.append((name, version))
        if len(out) >= limit:
            break
    return tuple(out)


def parse_termination(message: str) -> tuple[str | None, Packages | None, Packages | None]:
    """(digest, software, dependencies) from the push step's termination message: a bare
    digest (older builders, OpenShift), or ``{"digest": ..., "software": [...],
    "dependencies": [...]}``. The digest is read only from the fixed prefix the push step
    writes; the lists (None: no report) are dropped when the report is not valid JSON with
    unique keys."""
    text = message.strip()
    if _DIGEST.fullmatch(text):
        return text, None, None
    found = _PREFIX.match(text)
    if not found:
        return None, None, None
    digest = found.group(1)
    try:
        body = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError):
        return digest, None, None
    if not isinstance(body, dict) or "software" not in body:
        return digest, None, None
    return (
        digest,
        packages(body.get("software"), MAX_SOFTWARE),
        packages(body.get("dependencies"), MAX_DEPENDENCIES),
    )


def packages_annotation(items: Packages) -> str:
    """The JSON list of ``{"name", "version"}`` the catalog reads from a tag annotation."""
    return json.dumps([{"name": n, "version": v} for n, v in items], separators=(",", ":"))
