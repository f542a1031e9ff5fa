"""The Dockerfile of an environment build (:func:`environment_dockerfile`): what
:func:`.environment.decide` decided, as build steps. The environment part (base image,
apt.txt, the package files and their installs) comes first, then
:data:`~.environment.ENVIRONMENT_MARKER`, then the repository's content and its own steps; every
step runs the helper script ``aicoe-env.sh``. Pure code, no I/O."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from importlib import resources

from .env_files import conda_environment, is_local_requirement
from .environment import (
    ENVIRONMENT_MARKER,
    HELPER,
    PACKAGE_FILES,
    Decision,
    EnvSettings,
    _at,
    apt_packages,
    has_build_system,
    is_poetry_package,
)

__all__ = ["HELPER_SCRIPT", "environment_dockerfile"]

# -- the generated Dockerfile -------------------------------------------------------------

# The helper every step calls (installed first, the same for every build: a cached layer).
# ``aicoe-env <step> <file> [args]``; a failing step prints ``aicoe-build-error: <why>``,
# which the build script reports as the build's message.
HELPER_SCRIPT = (resources.files(__package__) / "aicoe-env.sh").read_text()


def _quote_lines(lines: Iterable[str]) -> str:
    return " ".join(shlex.quote(line) for line in lines)


def _needs_whole_repo(requirements: str | None) -> bool:
    """A requirements.txt naming local paths or other files needs the whole repository."""
    return any(is_local_requirement(line) for line in (requirements or "").splitlines())


def environment_dockerfile(
    decision: Decision,
    base_image: str,
    settings: EnvSettings,
    files: Mapping[str, str | None],
    labels: Mapping[str, str] | None = None,
) -> str:
    """The Dockerfile of an environment (or content-only) build: as root, apt.txt; the
    environment files copied into the home folder and installed; then
    :data:`ENVIRONMENT_MARKER` (what is above is the environment image, reused while those
    files stay the same); then the labels and the rest of the repository; then, as the notebook
    user, postBuild; ``start`` becomes the entrypoint. ``files``: as for :func:`decide`."""
    home = settings.home.rstrip("/") or "/"
    user = settings.user
    folder = decision.folder
    got = set(decision.decided_by)

    def has(name: str) -> bool:
        return _at(folder, name) in got

    def path(name: str) -> str:
        return f"{home}/{_at(folder, name)}"

    q = shlex.quote
    out = [f"FROM {base_image}"]
    all_labels = {
        **(labels or {}),
        "io.aicoe-spawner.decided-by": " ".join(decision.decided_by) or "content-only",
    }
    # after ENVIRONMENT_MARKER: the commit's labels must not change the environment image
    label = "LABEL " + " ".join(
        f'"{k}"="{v.replace(chr(34), "").replace(chr(10), " ")}"'
        for k, v in sorted(all_labels.items())
    )
    # build-time variables as a prefix of each step: not left in the image's environment, and
    # no ARG instructions (buildah 1.28's --cache-from misses after an ARG step)
    env = {"AICOE_BASE_IMAGE": base_image, "AICOE_HOME": home}
    if settings.package_index_url:
        env["PIP_INDEX_URL"] = settings.package_index_url
        env["UV_INDEX_URL"] = settings.package_index_url
        env["UV_DEFAULT_INDEX"] = settings.package_index_url
    if settings.trusted_host:
        env["PIP_TRUSTED_HOST"] = settings.trusted_host
        env["UV_INSECURE_HOST"] = settings.trusted_host
    prefix = " ".join(f"{k}={q(v)}" for k, v in env.items())

    def step(*args: str) -> str:
        return f"RUN {prefix} {HELPER} {' '.join(args)}"

    out.append("USER root")
    out.append(
        f"RUN mkdir -p {HELPER.rsplit('/', 1)[0]} && "
        f"printf '%s\\n' {_quote_lines(HELPER_SCRIPT.splitlines())} > {HELPER}"
        f" && chmod 755 {HELPER}"
    )
    if decision.python_version:
        src = decision.python_source or (
            _at(folder, "runtime.txt") if has("runtime.txt") else _at(folder, ".python-version")
        )
        out.append(step("python", q(src), decision.python_version))
    if has("apt.txt"):
        pkgs = apt_packages(_at(folder, "apt.txt"), files.get(_at(folder, "apt.txt")) or "")
        run = step("apt", q(_at(folder, "apt.txt")), *pkgs)
        if settings.apt_sources:
            run = (
                f"RUN printf '%s\\n' {_quote_lines(settings.apt_sources)}"
                f" > /tmp/aicoe-apt.list && {run[4:]}"
            )
        out.append(run)
    chown = f"--chown={user}"
    early = [n for n in PACKAGE_FILES if has(n)]
    req_late = has("requirements.txt") and _needs_whole_repo(
        files.get(_at(folder, "requirements.txt"))
    )
    if req_late:
        early.remove("requirements.txt")
    conda = decision.conda_file.rsplit("/", 1)[-1]
    # a pip: list naming the repository's files (-r requirements.txt, -e .): after the copy
    text = files.get(decision.conda_file) if conda else None
    conda_late = bool(conda) and (text is None or conda_environment(conda, text).local)
    if conda_late:
        early.remove(conda)
    for name in early:
        out.append(f"COPY {chown} {_at(folder, name)} {path(name)}")
    if conda and not conda_late:
        out.append(step("conda", q(path(conda))))
    locked = True
    if has("Pipfile.lock"):
        out.append(step("pipenv", q(path("Pipfile.lock"))))
    elif has("uv.lock"):
        out.append(step("uv", q(path("uv.lock"))))
    elif has("poetry.lock"):
        out.append(step("poetry", q(path("poetry.lock"))))
    elif has("pylock.toml"):
        out.append(step("pylock", q(path("pylock.toml"))))
    elif has("requirements.txt") and not req_late:
        out.append(step("requirements", q(path("requirements.txt"))))
        locked = False
    else:
        locked = False
    out += [ENVIRONMENT_MARKER, label, f"COPY {chown} . {home}/"]
    if conda_late:
        out.append(step("conda", q(path(conda))))
    lock = next((n for n in ("Pipfile.lock", "uv.lock", "poetry.lock") if has(n)), "")
    if lock and not conda:  # the lock's local paths (-e ., ./libs/x)
        out.append(step("deferred", q(path(lock))))
    if req_late:
        out.append(step("requirements", q(path("requirements.txt"))))
    pyproject = files.get(_at(folder, "pyproject.toml"))
    if has("poetry.lock") and not has("setup.py"):
        if is_poetry_package(pyproject):  # as `poetry install` does; a note if it cannot be
            out.append(step("project", q(path("pyproject.toml")), "--optional", "--no-deps"))
    elif (
        has("setup.py")
        or (has("pyproject.toml") and not has("uv.lock"))
        or (has("uv.lock") and has_build_system(pyproject))
    ):
        project = path("setup.py") if has("setup.py") else path("pyproject.toml")
        out.append(step("project", q(project), *(["--no-deps"] if locked else [])))
    if has("start"):
        out.append(f"RUN install -m 0755 {q(path('start'))} /usr/local/bin/aicoe-repo-start")
    # the home writable by the notebook user and by any uid of group 0 (after postBuild,
    # which may add files to it)
    if not has("postBuild"):
        out.append(step("home", q(home)))
    out += [f"USER {user}", f"WORKDIR {home}"]
    if has("postBuild"):
        out += [step("postbuild", q(path("postBuild"))), "USER root", step("home", q(home))]
        out.append(f"USER {user}")
    if has("start"):
        out += ['ENTRYPOINT ["/usr/local/bin/aicoe-repo-start"]', 'CMD ["jupyterhub-singleuser"]']
    return "\n".join(out) + "\n"
