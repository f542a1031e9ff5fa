"""Every real repository in tests/data/repos (see each PROVENANCE) through detection and the
generated Dockerfile, as the builder sees it: the paths of the case's files, the contents of
those :func:`files_to_read` names (decoded as the builder decodes them), the builder's default
Python versions. Each case's outcome: the strategy and the files that decided it with the key
steps of its Dockerfile, or the refusal naming the file and the cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicoe_spawner.builder import environment as env
from aicoe_spawner.builder.env_dockerfile import environment_dockerfile
from aicoe_spawner.builder.env_files import decode_text
from aicoe_spawner.builder.requests import BuildRequestError
from aicoe_spawner.builder.settings import DEFAULT_PYTHON_BASE_IMAGES

REPOS = Path(__file__).resolve().parents[1] / "data" / "repos"
S = env.EnvSettings(python_base_images=dict(DEFAULT_PYTHON_BASE_IMAGES))
IMAGE = "quay.io/jupyter/minimal-notebook:python-"
R_OR_JULIA = (
    "this file asks for {} environment, and this builder installs Python environments only "
    "(Python versions offered: 3.11, 3.12, 3.13): add a Dockerfile that installs {} "
    "(e.g. FROM quay.io/jupyter/{}-notebook)"
)

#: case -> (kind, decided_by, base image ("" = the default), the helper's steps in order)
BUILT = {
    "apt-postbuild": (
        "environment",
        ("apt.txt", "postBuild"),
        "",
        ["apt apt.txt lolcat cowsay", "postbuild /home/jovyan/postBuild"],
    ),
    "conda-python-pin": (
        "environment",
        ("environment.yml",),
        IMAGE + "3.11",
        ["python environment.yml 3.11", "conda /home/jovyan/environment.yml"],
    ),
    "dockerfile-only": ("dockerfile", ("Dockerfile",), "", []),
    "dotbinder-conda-postbuild": (
        "environment",
        (".binder/environment.yml", ".binder/postBuild"),
        IMAGE + "3.12",
        [
            "python .binder/environment.yml 3.12",
            "conda /home/jovyan/.binder/environment.yml",
            "postbuild /home/jovyan/.binder/postBuild",
        ],
    ),
    "pipfile-lock": (
        "environment",
        ("Pipfile", "Pipfile.lock"),
        "",
        ["pipenv /home/jovyan/Pipfile.lock", "deferred /home/jovyan/Pipfile.lock"],
    ),
    "poetry-lock": (
        "environment",
        ("pyproject.toml", "poetry.lock"),
        "",
        [
            "poetry /home/jovyan/poetry.lock",
            "deferred /home/jovyan/poetry.lock",
            "project /home/jovyan/pyproject.toml --optional --no-deps",
        ],
    ),
    "requirements-only": (
        "environment",
        ("requirements.txt",),
        "",
        ["requirements /home/jovyan/requirements.txt"],
    ),
    "runtime-uv-lock": (
        "environment",
        ("runtime.txt", "pyproject.toml", "uv.lock"),
        IMAGE + "3.11",
        ["python runtime.txt 3.11", "uv /home/jovyan/uv.lock", "deferred /home/jovyan/uv.lock"],
    ),
    "uv-lock": (
        "environment",
        ("pyproject.toml", "uv.lock"),
        "",
        [
            "uv /home/jovyan/uv.lock",
            "deferred /home/jovyan/uv.lock",
            "project /home/jovyan/pyproject.toml --no-deps",
        ],
    ),
}
#: case -> (the file the refusal names, its message)
REFUSED = {
    "binder-r-with-python": ("binder/install.R", R_OR_JULIA.format("an R", "R", "r")),
    "conda-pin-not-offered": (
        "environment.yml",
        "Python 3.5 is not offered by this builder (versions offered: 3.11, 3.12, 3.13); change "
        "the pin 'python=3.5' in environment.yml to one of them, or remove it (the base image's "
        "Python)",
    ),
    "julia-project": ("Project.toml", R_OR_JULIA.format("a Julia", "Julia", "julia")),
    "r-install": ("install.R", R_OR_JULIA.format("an R", "R", "r")),
    "runtime-python2": (
        "runtime.txt",
        "Python 2.7 is not offered by this builder (versions offered: 3.11, 3.12, 3.13); change "
        "runtime.txt to one of them",
    ),
}
CASES = sorted(p.name for p in REPOS.iterdir() if p.is_dir())


def view(case: str) -> tuple[list[str], dict[str, str | None]]:
    root = REPOS / case
    paths = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "PROVENANCE"
    )
    files: dict[str, str | None] = {}
    for p in env.files_to_read(paths):
        data = (root / p).read_bytes()
        files[p] = decode_text(data) if len(data) <= env.MAX_FILE_BYTES else None
    return paths, files


def test_every_case_has_an_expected_outcome():
    assert sorted([*BUILT, *REFUSED]) == CASES


@pytest.mark.parametrize("case", CASES)
def test_a_real_repository_builds_or_is_refused_naming_file_and_cause(case):
    paths, files = view(case)
    if case in REFUSED:
        with pytest.raises(BuildRequestError) as e:
            env.decide(paths, files, S)
        assert (e.value.field, e.value.why, e.value.status) == (*REFUSED[case], 422)
        return
    kind, decided_by, base, steps = BUILT[case]
    d = env.decide(paths, files, S)
    assert (d.kind, d.decided_by, d.base_image) == (kind, decided_by, base)
    if kind == "dockerfile":
        assert d.dockerfile == decided_by[0]
        return
    text = environment_dockerfile(d, d.base_image or S.base_image, S, files)
    lines = text.splitlines()
    assert lines[0] == f"FROM {base or S.base_image}"
    ran = [
        line.split("/usr/local/bin/aicoe-env ", 1)[1]
        for line in lines
        if line.startswith("RUN ") and "/usr/local/bin/aicoe-env " in line and "printf" not in line
    ]
    assert ran == [*steps, "home /home/jovyan"]
    # the package files are copied (and installed) before the rest of the repository
    marker = lines.index(env.ENVIRONMENT_MARKER)
    for path in decided_by:
        if path.rsplit("/", 1)[-1] in env.PACKAGE_FILES:
            assert lines.index(f"COPY --chown=1000:100 {path} /home/jovyan/{path}") < marker
