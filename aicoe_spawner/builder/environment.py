"""What a repository is built as, and the Dockerfile of an environment build (pure).

Input: the repository's file list at the commit (for an ``.aicoe-ci.yaml`` overlay: the view
after AICoE-CI's copy-in rule, :func:`overlay_view`) and the contents of its small environment
files. Output: a :class:`Decision` (``dockerfile`` | ``environment`` | ``content-only``, the
files that decided it) and, for environment builds, the Dockerfile (:func:`environment_dockerfile`).

Detection order (docs/builder.md): the environment folder is ``binder/`` or ``.binder/`` when
the repository has one (then it is the only place looked at; both is refused, as repo2docker
does), else the root. 1. ``Dockerfile``, else ``Containerfile`` there -> a Dockerfile build.
2. Any environment file there -> an environment build. 3. Else the repository's content on the
default notebook image. Lock files are never parsed here: micropipenv, uv and pip read them in
the build. Refusals raise :class:`BuildRequestError` (status 422) naming the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .env_files import (
    CondaEnv,
    conda_environment,
    pipfile_python,
)
from .fields import BuildRequestError, validate_image

__all__ = [
    "ENV_FILES",
    "MAX_FILE_BYTES",
    "Decision",
    "EnvSettings",
    "RepoView",
    "decide",
    "environment_folder",
    "files_to_read",
    "overlay_view",
]

MAX_FILE_BYTES = 64 * 1024
DOCKERFILES = ("Dockerfile", "Containerfile")
#: The files an environment build honours, in the order their steps run.
#: The package files copied into the image (and installed) before the rest of the repository.
PACKAGE_FILES = (
    "environment.yml",
    "environment.yaml",  # repo2docker reads it when there is no environment.yml
    "Pipfile",
    "Pipfile.lock",
    "pyproject.toml",
    "uv.lock",
    "poetry.lock",
    "pylock.toml",
    "requirements.txt",
)
ENV_FILES = (
    "apt.txt",
    "runtime.txt",
    ".python-version",
    *PACKAGE_FILES,
    "setup.py",
    "postBuild",
    "start",
)
#: Files whose content detection reads (the rest only need to exist).
READ_FILES = (
    "apt.txt",
    "runtime.txt",
    ".python-version",
    "environment.yml",
    "environment.yaml",
    "Pipfile",
    "pyproject.toml",
    "requirements.txt",
)
CONDA_FILES = ("environment.yml", "environment.yaml")
HELPER = "/usr/local/bin/aicoe-env"
#: The line of a generated Dockerfile between the environment (the base image, apt.txt, the
#: package files and their installs: what the environment image holds, reused by every commit
#: whose environment files are the same) and the repository's content after it.
ENVIRONMENT_MARKER = "# aicoe-spawner: the environment above, the repository below"
_APT_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?")
# 3.12, 3.12.4, and pre-releases or builds as pyenv and uv write them (3.14rc3, 3.13t, 3.12.0+)
_VERSION = re.compile(r"(\d+)\.(\d+)(\.\d+)?((a|b|rc)\d+|\.dev\d+|t|\+)?")
_MAJOR_ONLY = re.compile(r"(python-?)?3")
#: Environment files of other languages (repo2docker's R, Julia and Nix buildpacks): this builder
#: installs Python environments only, so a repository that has one is refused naming it rather
#: than started without what its notebooks need.
OTHER_LANGUAGES = {
    "install.R": "R",
    "DESCRIPTION": "R",
    "Project.toml": "Julia",
    "JuliaProject.toml": "Julia",
    "REQUIRE": "Julia",
    "default.nix": "Nix",
}
_R_RUNTIME = re.compile(r"r-(\d+(\.\d+)*|devel|release)?(-?\d{4}-\d{2}-\d{2})?", re.IGNORECASE)


@dataclass(frozen=True)
class RepoView:
    """What detection reads of a commit: the paths in it and the contents of the small
    environment files (path -> text, None when too large to read)."""

    paths: tuple[str, ...]
    files: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvSettings:
    """The admin's choices for environment builds.

    ``python_base_images``: Python version (``"3.12"``) -> the base image a ``runtime.txt`` /
    ``.python-version`` naming it builds on; other versions are refused. ``package_index_url``
    (+ ``trusted_host``): the PEP 503 index pip, uv and the tools come from (empty: their
    defaults). ``apt_sources``: sources.list lines ``apt.txt`` installs from instead of the
    image's own (empty: the image's). ``user`` / ``home``: the notebook user (uid:gid) and its
    home, where the repository's files go."""

    base_image: str = "quay.io/jupyter/minimal-notebook:2025-10-06"
    python_base_images: Mapping[str, str] = field(default_factory=dict)
    package_index_url: str = ""
    trusted_host: str = ""
    apt_sources: tuple[str, ...] = ()
    user: str = "1000:100"
    home: str = "/home/jovyan"


@dataclass(frozen=True)
class Decision:
    """``kind``: dockerfile | environment | content-only; ``decided_by``: the files (paths in
    the repository) that decided it; ``dockerfile``: the file of a Dockerfile build;
    ``folder``: where environment files are read (``""``, ``binder``, ``.binder``);
    ``base_image`` / ``python_version``: chosen by runtime.txt / .python-version (else empty);
    ``notes``: what else was found and not used."""

    kind: str
    decided_by: tuple[str, ...] = ()
    dockerfile: str = ""
    folder: str = ""
    base_image: str = ""
    python_version: str = ""
    notes: tuple[str, ...] = ()
    python_source: str = ""  # the file that named python_version

    @property
    def conda_file(self) -> str:
        """The conda environment file that decided (a path), else ``""``."""
        return next((p for p in self.decided_by if p.rsplit("/", 1)[-1] in CONDA_FILES), "")

    @property
    def strategy(self) -> str:
        """The build strategy: ``dockerfile``, else ``environment`` (content-only included)."""
        return "dockerfile" if self.kind == "dockerfile" else "environment"


def _refuse(path: str, why: str) -> BuildRequestError:
    return BuildRequestError(path, why, 422)


def overlay_view(paths: Iterable[str], overlay: str) -> dict[str, str]:
    """AICoE-CI's overlay rule as a view: path seen by the build -> path in the repository.
    Before an overlay's build the root ``Pipfile``/``Pipfile.lock`` are removed and
    ``overlays/<name>/*`` (not its dot-files: a shell glob) is copied to the root, over what
    is there. ``overlay`` empty, or no ``overlays/<name>/`` folder (an overlay of build
    options only): the repository as it is."""
    paths = list(paths)
    view = {p: p for p in paths}
    if not overlay or not any(p.startswith(f"overlays/{overlay}/") for p in paths):
        return view
    view.pop("Pipfile", None)
    view.pop("Pipfile.lock", None)
    prefix = f"overlays/{overlay}/"
    for p in paths:
        if p.startswith(prefix) and not p[len(prefix) :].startswith("."):
            view[p[len(prefix) :]] = p
    return view


def environment_folder(paths: Iterable[str]) -> str:
    """``binder`` or ``.binder`` when the repository has that folder, else ``""``."""
    tops = {p.split("/", 1)[0] for p in paths if "/" in p}
    if "binder" in tops and ".binder" in tops:
        raise _refuse(
            "binder", "the repository has both binder/ and .binder/; keep one (repo2docker's rule)"
        )
    return "binder" if "binder" in tops else ".binder" if ".binder" in tops else ""


def _at(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def files_to_read(paths: Iterable[str]) -> list[str]:
    """The files (view paths) whose content :func:`decide` needs."""
    paths = set(paths)
    folder = environment_folder(paths)
    return [_at(folder, n) for n in READ_FILES if _at(folder, n) in paths]


def _lines(text: str) -> list[str]:
    text = text.removeprefix("\ufeff")  # a byte order mark (an editor's UTF-8 "with BOM")
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


_OTHER_BASE = {"R": "quay.io/jupyter/r-notebook", "Julia": "quay.io/jupyter/julia-notebook"}


def _not_python(
    path: str, language: str, settings: EnvSettings, what: str = ""
) -> BuildRequestError:
    offered = _offered(settings)
    base = _OTHER_BASE.get(language)
    return _refuse(
        path,
        f"{what or 'this file'} asks for {'an' if language == 'R' else 'a'} {language} "
        "environment, and this builder installs Python environments only"
        f" (Python versions offered: {offered}): add a Dockerfile "
        f"that installs {language}" + (f" (e.g. FROM {base})" if base else ""),
    )


def _python_version(path: str, text: str, settings: EnvSettings) -> str | None:
    """``python-3.11`` / ``3.11`` (runtime.txt), ``3.11.4`` / ``cpython-3.11`` (.python-version)
    -> ``3.11``; None when the file names no Python version at all (runtime.txt: something that
    is not a runtime, which repo2docker ignores too; .python-version: a pyenv environment name
    or ``system``), so the base image's Python is used and a note says so."""
    lines = _lines(text)
    raw = lines[0] if lines else ""
    # as people write it: 'Python-3.12', "python - 3.10", '3.14' in quotes, python-3-8
    value = re.sub(r"\s*-\s*", "-", raw.strip("'\" ")).lower()
    # python 3.11, python=3.11, python==3.11 (a conda or pip spelling of the same request)
    value = re.sub(r"^python\s*(==?|\s)\s*(?=\d)", "python-", value)
    value = re.sub(r"^(python-)?3-(\d+)", r"\g<1>3.\2", value)
    if path.endswith("runtime.txt"):
        if _R_RUNTIME.fullmatch(raw) and raw != "r-":
            raise _not_python(path, "R", settings, repr(raw))
        value = value.removeprefix("python-")
    if value.startswith("pypy"):
        raise _refuse(
            path,
            f"{raw!r} asks for PyPy, which this builder does not offer (versions offered: "
            f"{_offered(settings)}); write a CPython version such as 3.11",
        )
    value = value.removeprefix("cpython-").removeprefix("python")
    # the version at the start (a stray character pasted after it is left out)
    m = _VERSION.match(value.split("-", 1)[0]) if value else None
    if not m or m.group(1) not in ("2", "3"):  # e.g. a conda build string "1.0.9=py310…"
        return None
    return f"{m.group(1)}.{m.group(2)}"


def _offered(settings: EnvSettings) -> str:
    return ", ".join(sorted(settings.python_base_images, key=_version_key)) or "none"


def apt_packages(path: str, text: str) -> tuple[str, ...]:
    names = []
    for line in _lines(text):
        for name in line.split():
            if not _APT_NAME.fullmatch(name):
                raise _refuse(path, f"{name!r} is not a Debian package name")
            names.append(name)
    return tuple(names)


def has_build_system(text: str | None) -> bool:
    if text is None:
        return False
    try:
        return "build-system" in tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def is_poetry_package(text: str | None) -> bool:
    """A Poetry project that is a package: a [build-system], and no ``package-mode = false``
    (Poetry's "dependencies only" mode) in [tool.poetry]."""
    if not has_build_system(text):
        return False
    poetry = (tomllib.loads(text or "").get("tool") or {}).get("poetry") or {}
    return poetry.get("package-mode", True) is not False


def decide(
    paths: Iterable[str],
    files: Mapping[str, str | None],
    settings: EnvSettings,
    *,
    strategy: str | None = None,
    base_image: str | None = None,
) -> Decision:
    """The build of a repository with ``paths`` (view paths) and the contents ``files`` of
    :func:`files_to_read` (None: too large to read). ``strategy``: what the request or
    .aicoe-ci.yaml asked for (None: detect); ``base_image``: the one they named (it wins over
    runtime.txt). BuildRequestError (422) names the file a build cannot honour."""
    paths = set(paths)
    folder = environment_folder(paths)
    if strategy in (None, "dockerfile"):
        for name in DOCKERFILES:
            if _at(folder, name) in paths:
                return Decision("dockerfile", (_at(folder, name),), _at(folder, name), folder)
        if strategy == "dockerfile":
            return Decision("dockerfile", (), "", folder)
    for name, language in OTHER_LANGUAGES.items():
        if _at(folder, name) in paths:
            raise _not_python(_at(folder, name), language, settings)
    present = [n for n in ENV_FILES if _at(folder, n) in paths]
    for name in READ_FILES:
        if name in (*CONDA_FILES, "Pipfile"):  # read for a version pin: a note when too large
            continue
        if name in present and files.get(_at(folder, name)) is None:
            raise _refuse(_at(folder, name), f"larger than {MAX_FILE_BYTES // 1024} KiB")
    notes: list[str] = []
    if "Pipfile" in present and "Pipfile.lock" not in present:
        raise _refuse(
            _at(folder, "Pipfile"),
            "Pipfile has no Pipfile.lock: run `pipenv lock` and commit it",
        )
    for lock in ("uv.lock", "poetry.lock"):
        if lock in present and "pyproject.toml" not in present:
            raise _refuse(_at(folder, lock), f"{lock} without pyproject.toml cannot be installed")
    if "apt.txt" in present:
        apt_packages(_at(folder, "apt.txt"), files[_at(folder, "apt.txt")] or "")
    version = chosen = source = ""
    ignored: set[str] = set()

    def offer(path: str, v: str, what: str) -> None:
        """Python ``v`` named by ``path``: its base image, or refused naming the offer."""
        nonlocal version, chosen, source
        version, source = v, path
        if base_image:
            notes.append(f"{path} asks for Python {v}; the base image {base_image} is used")
            return
        if v not in settings.python_base_images:
            raise _refuse(
                path,
                f"Python {v} is not offered by this builder (versions offered: "
                f"{_offered(settings)}); {what}",
            )
        chosen = settings.python_base_images[v]

    conda = next((n for n in CONDA_FILES if n in present), "")
    if conda == "environment.yml" and "environment.yaml" in present:
        present.remove("environment.yaml")
        notes.append(f"{_at(folder, 'environment.yaml')} ignored: environment.yml is read first")
    if conda:
        path = _at(folder, conda)
        text = files.get(path)
        pinned = conda_environment(path, text) if text is not None else CondaEnv(local=True)
        if text is None:
            notes.append(
                f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB: its Python pin is not read"
            )
        if pinned.python == "3":
            notes.append(f"{path} pins {pinned.pin!r}: the base image's Python 3")
        elif pinned.python:  # repo2docker builds that Python: so do we, or say why not
            offer(
                path,
                {"2": "2.7"}.get(pinned.python, pinned.python),  # python=2: 2.7
                f"change the pin {pinned.pin!r} in {conda} to one of them, or remove it "
                "(the base image's Python)",
            )
    for name in ("runtime.txt", ".python-version"):
        if name not in present:
            continue
        path = _at(folder, name)
        if version or chosen:
            by = source.rsplit("/", 1)[-1] if source else "runtime.txt"
            what = "pins" if by in CONDA_FILES else "names"
            notes.append(f"{path} ignored: {by} {what} the Python version")
            ignored.add(name)
            continue
        if not _lines(files[path] or ""):  # e.g. "# python-3.11": repo2docker's default too
            notes.append(f"{path} names no version (only comments): the base image's Python")
            continue
        first = _lines(files[path] or "")[0]
        if name == "runtime.txt" and first.startswith("oci-image:"):
            # repo2docker's "extend this base image" form
            try:
                named = validate_image(first[len("oci-image:") :].strip(), path)
            except BuildRequestError as e:
                raise _refuse(path, e.why) from None
            if base_image:
                notes.append(f"{path} names the base image {named}; {base_image} is used")
            else:
                chosen = named
                notes.append(f"{path} names the base image {named}")
            continue
        if _MAJOR_ONLY.fullmatch(first):
            notes.append(f"{path} asks for Python 3: the base image's Python 3")
            continue
        found = _python_version(path, files[path] or "", settings) or ""
        if not found:
            what = "a Python runtime (python-X.Y)" if name == "runtime.txt" else "a Python version"
            notes.append(f"{path}: {first!r} is not {what}, ignored: the base image's Python")
            continue
        offer(path, found, f"change {name} to one of them")
    if not (version or chosen) and "Pipfile" in present and "Pipfile.lock" in present:
        # repo2docker's Pipfile buildpack builds the Python the Pipfile requires; a version this
        # builder lacks is noted (pipenv writes the developer's own Python there), not refused
        path = _at(folder, "Pipfile")
        wanted = pipfile_python(files.get(path))
        if wanted and base_image:
            notes.append(f"{path} asks for Python {wanted}; the base image {base_image} is used")
        elif wanted in settings.python_base_images:
            version, source, chosen = wanted, path, settings.python_base_images[wanted]
            notes.append(f"{path} asks for Python {wanted} ([requires] python_version)")
        elif wanted:
            notes.append(
                f"{path} asks for Python {wanted} ([requires] python_version), which this "
                f"builder does not offer (versions offered: {_offered(settings)}): the base "
                "image's Python; if the lock does not install on it, name an offered version "
                "in runtime.txt and lock again with it"
            )
    locks = [
        n
        for n in ("Pipfile.lock", "uv.lock", "poetry.lock", "pylock.toml", "requirements.txt")
        if n in present
    ]
    if conda:  # repo2docker: environment.yml takes precedence
        locks = [conda, *locks]
    for extra in locks[1:]:
        what = "names the environment" if locks[0] == conda else "pins the packages"
        notes.append(f"{_at(folder, extra)} ignored: {_at(folder, locks[0])} {what}")
    decided = [n for n in present if n not in locks[1:] and n not in ignored]
    if "pyproject.toml" in present and not {"uv.lock", "poetry.lock"} & set(decided):
        text = files.get(_at(folder, "pyproject.toml"))
        if not has_build_system(text) and "setup.py" not in present:
            decided.remove("pyproject.toml")
            notes.append(f"{_at(folder, 'pyproject.toml')} has no [build-system]: not installed")
    if not decided:
        return Decision("content-only", (), "", folder, chosen, version, tuple(notes), source)
    return Decision(
        "environment",
        tuple(_at(folder, n) for n in decided),
        "",
        folder,
        chosen,
        version,
        tuple(notes),
        source,
    )


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))


# -- what the service reads of a commit ----------------------------------------------------


def _in_context(view: Mapping[str, str], context_dir: str) -> dict[str, str]:
    if not context_dir:
        return dict(view)
    prefix = context_dir.rstrip("/") + "/"
    return {p[len(prefix) :]: src for p, src in view.items() if p.startswith(prefix)}


def wanted_files(paths: Iterable[str], overlay: str, context_dir: str) -> set[str]:
    """The repository paths whose content :func:`decide` needs for a build of ``overlay``
    with ``context_dir`` (what the service reads, at most MAX_FILE_BYTES each)."""
    seen = _in_context(overlay_view(paths, overlay), context_dir)
    return {seen[p] for p in files_to_read(seen)}


def build_view(view: RepoView, overlay: str) -> RepoView:
    """``view`` (the commit as it is) as ``overlay``'s build sees it (:func:`overlay_view`)."""
    seen = overlay_view(view.paths, overlay)
    return RepoView(
        tuple(seen), {p: view.files[src] for p, src in seen.items() if src in view.files}
    )
