"""Detection of what a repository is built as, and the environment build's Dockerfile."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aicoe_spawner.builder import env_dockerfile as generated
from aicoe_spawner.builder import env_files
from aicoe_spawner.builder import environment as env
from aicoe_spawner.builder.requests import BuildRequestError

S = env.EnvSettings(
    base_image="quay.io/jupyter/minimal-notebook:2025-10-06",
    python_base_images={"3.11": "nb:3.11", "3.12": "quay.io/jupyter/minimal-notebook:python-3.12"},
    package_index_url="http://10.1.0.1:8081/simple/",
    trusted_host="10.1.0.1",
    apt_sources=("deb [trusted=yes] http://10.1.0.1:8082 ./",),
)
READ = {
    "requirements.txt": "numpy==2.1.0\n",
    "apt.txt": "# tools\ncurl\nlibgomp1 jq # json\n",
    "runtime.txt": "python-3.11\n",
    ".python-version": "3.12.4\n",
    "pyproject.toml": '[project]\nname = "x"\n[build-system]\nrequires = ["hatchling"]\n',
    "environment.yml": "channels:\n  - conda-forge\ndependencies:\n  - numpy\n",
    "environment.yaml": "dependencies:\n  - pandas\n",
    "Pipfile": '[packages]\nnumpy = "*"\n',
}


def files_of(paths, **content):
    """The contents decide() reads, for ``paths`` (defaults from READ, overrides by name)."""
    wanted = env.files_to_read(paths)
    out = {}
    for p in wanted:
        name = p.rsplit("/", 1)[-1]
        out[p] = content.get(name.replace(".", "_"), READ[name])
    return out


def decide(paths, **kw):
    content = {k: v for k, v in kw.items() if k not in ("strategy", "base_image")}
    return env.decide(
        paths,
        files_of(paths, **content),
        S,
        strategy=kw.get("strategy"),
        base_image=kw.get("base_image"),
    )


def refused(paths, **kw) -> BuildRequestError:
    with pytest.raises(BuildRequestError) as e:
        decide(paths, **kw)
    assert e.value.status == 422
    return e.value


# -- detection order -------------------------------------------------------------------


@pytest.mark.parametrize(
    "paths, kind, by, dockerfile",
    [
        (["Dockerfile", "requirements.txt"], "dockerfile", ("Dockerfile",), "Dockerfile"),
        (["Containerfile", "apt.txt"], "dockerfile", ("Containerfile",), "Containerfile"),
        (["Dockerfile", "Containerfile"], "dockerfile", ("Dockerfile",), "Dockerfile"),
        # a binder folder is the only place looked at: the root Dockerfile is not used
        (
            ["Dockerfile", "binder/requirements.txt"],
            "environment",
            ("binder/requirements.txt",),
            "",
        ),
        (
            ["binder/Dockerfile", "requirements.txt"],
            "dockerfile",
            ("binder/Dockerfile",),
            "binder/Dockerfile",
        ),
        (
            [".binder/Containerfile"],
            "dockerfile",
            (".binder/Containerfile",),
            ".binder/Containerfile",
        ),
        (["requirements.txt", "nb.ipynb"], "environment", ("requirements.txt",), ""),
        (["nb.ipynb", "README.md"], "content-only", (), ""),
        (["binder/README.md", "requirements.txt"], "content-only", (), ""),
        (["sub/Dockerfile", "sub/requirements.txt"], "content-only", (), ""),
    ],
)
def test_detection_order(paths, kind, by, dockerfile):
    d = decide(paths)
    assert (d.kind, d.decided_by, d.dockerfile) == (kind, by, dockerfile)
    assert d.strategy == ("dockerfile" if kind == "dockerfile" else "environment")


def test_both_binder_folders_are_refused():
    e = refused(["binder/requirements.txt", ".binder/apt.txt"])
    assert e.field == "binder" and "both binder/ and .binder/" in e.why


def test_a_named_strategy_skips_detection():
    assert decide(["Dockerfile", "requirements.txt"], strategy="environment").decided_by == (
        "requirements.txt",
    )
    d = decide(["requirements.txt"], strategy="dockerfile")
    assert d.kind == "dockerfile" and d.decided_by == ()


def test_every_file_kind_decides_in_step_order():
    paths = [*env.ENV_FILES, "nb.ipynb"]
    paths.remove("Pipfile")  # a lock without Pipfile is fine (no staleness check)
    d = decide(paths)
    assert d.decided_by == (
        "apt.txt",
        "runtime.txt",
        "environment.yml",
        "pyproject.toml",
        "setup.py",
        "postBuild",
        "start",
    )
    # one file names the packages (environment.yml first, as repo2docker's conda buildpack
    # comes before its Pipfile and requirements ones); the others are named as ignored
    for lock in ("Pipfile.lock", "uv.lock", "requirements.txt"):
        assert f"{lock} ignored: environment.yml names the environment" in d.notes
    assert "environment.yaml ignored: environment.yml is read first" in d.notes
    d = decide([p for p in paths if p not in env.CONDA_FILES])
    assert "Pipfile.lock" in d.decided_by
    assert "uv.lock ignored: Pipfile.lock pins the packages" in d.notes
    assert "requirements.txt ignored: Pipfile.lock pins the packages" in d.notes
    assert ".python-version ignored: runtime.txt names the Python version" in d.notes


@pytest.mark.parametrize(
    "paths, first",
    [
        (["uv.lock", "pyproject.toml", "pylock.toml", "requirements.txt"], "uv.lock"),
        (["pylock.toml", "requirements.txt"], "pylock.toml"),
        (["requirements.txt", "setup.py"], "requirements.txt"),
    ],
)
def test_lock_precedence(paths, first):
    assert first in decide(paths).decided_by


# -- refusals -----------------------------------------------------------------------------


def test_pipfile_without_lock_is_refused():
    e = refused(["Pipfile", "nb.ipynb"])
    assert e.field == "Pipfile"
    assert e.why == "Pipfile has no Pipfile.lock: run `pipenv lock` and commit it"


def test_uv_lock_without_pyproject_is_refused():
    assert refused(["uv.lock"]).field == "uv.lock"


@pytest.mark.parametrize(
    "name, text, version",
    [
        ("runtime.txt", "python-3.11\n", "3.11"),
        ("runtime.txt", "# pinned\npython-3.12.4\n", "3.12"),
        (".python-version", "3.12\n", "3.12"),
        (".python-version", "cpython-3.11.9\n", "3.11"),
        # uv's interpreter key (as a real .python-version has it) and pyenv's several lines
        (".python-version", "cpython-3.12rc3-macos-x86_64-none\n", "3.12"),
        (".python-version", "3.11.11\n3.7.13\n", "3.11"),
        # real runtime.txt files (the repositories in the comments): what they mean is clear
        ("runtime.txt", "Python-3.12.10\n", "3.12"),  # 7Ayush-cyber/Plant_disease_prediction-
        ("runtime.txt", "python - 3.11\n", "3.11"),  # bio-learn/biolearn (.binder, 3.10)
        ("runtime.txt", "'3.12'\n", "3.12"),  # eso/astroquery_examples (.binder, '3.14')
        ("runtime.txt", "python-3-11\n", "3.11"),  # codeur66/scikit-learn-mooc (python-3-8)
        ("runtime.txt", " python-3.12\n", "3.12"),  # CryoInTheCloud/CryoCloudWebsite (3.9)
        ("runtime.txt", "python-3.11\ufffcEnter\n", "3.11"),  # Solo120140/Tfmib-for-binder-
        ("runtime.txt", "python-3.12.19gi`\n", "3.12"),  # 1day1commit/AI_Melody_Generator
    ],
)
def test_python_version_maps_to_the_admins_base_image(name, text, version):
    d = decide([name], **{name.replace(".", "_"): text})
    assert d.python_version == version
    assert d.base_image == S.python_base_images[version]
    assert d.kind == "environment" and d.decided_by == (name,)


@pytest.mark.parametrize(
    "name, text, shown",
    [
        ("runtime.txt", "python-2.7\n", "Python 2.7 is not offered"),
        ("runtime.txt", "python-3.9\n", "Python 3.9 is not offered"),
        (".python-version", "3.13.1\n", "Python 3.13 is not offered"),
        ("runtime.txt", "r-2023-01-01\n", "'r-2023-01-01' asks for an R environment"),
        ("runtime.txt", "r-4.1-2020-07-24\n", "'r-4.1-2020-07-24' asks for an R environment"),
        # 22hamed22/FTSE-100-UK-Stock-Market's runtime.txt is "3.10\nf\n": a bare version
        ("runtime.txt", "3.10\nf\n", "Python 3.10 is not offered"),
        ("runtime.txt", "python-3.6.4\naiohttp==1.0.5\n", "Python 3.6 is not offered"),
        (".python-version", "pypy3.10\n", "'pypy3.10' asks for PyPy"),
        # repo2docker's tests/venv/pypy/runtime.txt
        ("runtime.txt", "python-pypy3.5-5.9.0\n", "'python-pypy3.5-5.9.0' asks for PyPy"),
        ("runtime.txt", "oci-image:not an image\n", "is not a valid image reference"),
    ],
)
def test_unknown_python_versions_are_refused_naming_the_file_and_the_offer(name, text, shown):
    e = refused([name, "requirements.txt"], **{name.replace(".", "_"): text})
    assert e.field == name
    assert shown in e.why
    if "offered" in shown:
        assert "(versions offered: 3.11, 3.12)" in e.why


@pytest.mark.parametrize(
    "path, language",
    [
        ("install.R", "an R"),
        ("DESCRIPTION", "an R"),
        ("binder/install.R", "an R"),
        ("Project.toml", "a Julia"),
        ("REQUIRE", "a Julia"),
        (".binder/default.nix", "a Nix"),
    ],
)
def test_other_languages_environment_files_are_refused_naming_them(path, language):
    """repo2docker's R, Julia and Nix files: refused, not built without what they install
    (even next to a requirements.txt, whose image would lack the R packages)."""
    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    e = refused([path, f"{folder}requirements.txt", "analysis.ipynb"])
    assert e.field == path
    assert f"this file asks for {language} environment" in e.why
    assert "installs Python environments only (Python versions offered: 3.11, 3.12)" in e.why
    assert e.status == 422


def test_a_dockerfile_builds_whatever_language_files_are_there():
    assert decide(["Dockerfile", "install.R", "Project.toml"]).kind == "dockerfile"


POETRY_PACKAGE = '[tool.poetry]\nname = "x"\n[build-system]\nrequires = ["poetry-core"]\n'


def test_a_poetry_lock_is_installed_by_micropipenv_then_the_project_without_its_deps():
    d, lines = dockerfile(
        ["pyproject.toml", "poetry.lock", "a.ipynb"], pyproject_toml=POETRY_PACKAGE
    )
    assert d.decided_by == ("pyproject.toml", "poetry.lock")
    assert not d.notes
    home = S.home
    assert f"COPY --chown={S.user} poetry.lock {home}/poetry.lock" in lines
    poetry = index_of(lines, "RUN /usr/local/bin/aicoe-env poetry ")
    assert lines[poetry] == f"RUN /usr/local/bin/aicoe-env poetry {home}/poetry.lock"
    assert poetry < lines.index(env.ENVIRONMENT_MARKER)  # in the environment image
    assert f"RUN /usr/local/bin/aicoe-env deferred {home}/poetry.lock" in lines
    project = index_of(lines, "RUN /usr/local/bin/aicoe-env project ")
    assert lines[project].endswith(f"project {home}/pyproject.toml --optional --no-deps")
    assert project > lines.index(env.ENVIRONMENT_MARKER)


@pytest.mark.parametrize(
    "pyproject",
    [
        '[tool.poetry]\nname = "x"\npackage-mode = false\n'
        '[build-system]\nrequires = ["poetry-core"]\n',
        '[tool.poetry]\nname = "x"\n',  # no [build-system]: nothing to build
    ],
)
def test_a_poetry_project_that_is_no_package_installs_its_lock_alone(pyproject):
    d, lines = dockerfile(["pyproject.toml", "poetry.lock"], pyproject_toml=pyproject)
    assert d.decided_by == ("pyproject.toml", "poetry.lock")
    assert any(line.startswith("RUN /usr/local/bin/aicoe-env poetry ") for line in lines)
    assert not any(line.startswith("RUN /usr/local/bin/aicoe-env project ") for line in lines)


def test_a_poetry_lock_without_pyproject_is_refused_naming_it():
    e = refused(["poetry.lock", "a.ipynb"])
    assert (e.field, e.why) == (
        "poetry.lock",
        "poetry.lock without pyproject.toml cannot be installed",
    )


def test_a_pipfile_lock_or_uv_lock_beside_a_poetry_lock_wins_and_the_other_is_noted():
    d = decide(["pyproject.toml", "uv.lock", "poetry.lock"], pyproject_toml=POETRY_PACKAGE)
    assert d.decided_by == ("pyproject.toml", "uv.lock")
    assert "poetry.lock ignored: uv.lock pins the packages" in d.notes
    d = decide(["pyproject.toml", "poetry.lock", "requirements.txt"], pyproject_toml=POETRY_PACKAGE)
    assert d.decided_by == ("pyproject.toml", "poetry.lock")
    assert "requirements.txt ignored: poetry.lock pins the packages" in d.notes


@pytest.mark.parametrize("text", ["# python-3.11\n", "\n", ""])
def test_a_runtime_txt_that_names_nothing_is_noted_not_refused(text):
    """As a real repository has it (UG4/py-course-modsim's binder/runtime.txt is
    "# python-3.11"): repo2docker uses its default Python, and so do we."""
    d = decide(["runtime.txt", "requirements.txt"], runtime_txt=text)
    assert (d.kind, d.python_version, d.base_image) == ("environment", "", "")
    assert d.notes == ("runtime.txt names no version (only comments): the base image's Python",)


@pytest.mark.parametrize(
    "name, text",
    [
        # 2025ab05181/MLASSIGNMENT-2 keeps its requirements in runtime.txt
        ("runtime.txt", "streamlit==1.41.1\npandas==2.2.3\n"),
        ("runtime.txt", "julia-1.9\n"),
        # 0Petya/rain-in-austrailia's .python-version names its pyenv virtualenv
        (".python-version", "rain-in-australia\n"),
        (".python-version", "system\n"),
        # 271828D/DE-project: conda build strings; aidanmbreer/python-training: python-11;
        # 1010mark/WordDistanceGame: a Git LFS pointer; 0silverback0/marijuana-survey: ptyhon-
        (".python-version", "1.0.9=py310h6a678d5_9\n3.10.18=h1a3bd86_0\n"),
        ("runtime.txt", "python-11\n"),
        ("runtime.txt", "version https://git-lfs.github.com/spec/v1\noid sha256:00\n"),
        ("runtime.txt", "ptyhon-3.9.2\n"),
    ],
)
def test_a_version_file_that_names_no_python_version_is_noted_and_ignored(name, text):
    """As repo2docker ignores a runtime.txt that is not ``python-…`` (and pyenv writes an
    environment's name to .python-version): the base image's Python, and the record says so."""
    d = decide([name, "requirements.txt"], **{name.replace(".", "_"): text})
    assert (d.kind, d.python_version, d.base_image) == ("environment", "", "")
    first = text.splitlines()[0]
    assert len(d.notes) == 1 and d.notes[0].startswith(f"{name}: {first!r} is not a Python")
    assert d.notes[0].endswith("ignored: the base image's Python")


@pytest.mark.parametrize("text", ["python-3\n", "3\n"])
def test_python_3_alone_is_the_base_images_python(text):
    """repo2docker's tests/venv/py3/runtime.txt is ``python-3``: any Python 3."""
    d = decide(["runtime.txt", "requirements.txt"], runtime_txt=text)
    assert (d.kind, d.python_version, d.base_image) == ("environment", "", "")
    assert d.notes == ("runtime.txt asks for Python 3: the base image's Python 3",)


def test_runtime_txt_may_name_the_base_image_as_repo2docker_reads_it():
    """repo2docker's tests/extended/extended_base_python_image/runtime.txt form."""
    text = "oci-image:ucbdatahub/jupyterlab-extended-base-python-image:latest\n"
    d = decide(["runtime.txt", "requirements.txt"], runtime_txt=text)
    assert d.base_image == "ucbdatahub/jupyterlab-extended-base-python-image:latest"
    assert d.notes == (
        "runtime.txt names the base image ucbdatahub/jupyterlab-extended-base-python-image:latest",
    )
    d = decide(["runtime.txt"], runtime_txt=text, base_image="my/image:1")
    assert d.base_image == ""  # the caller's own base image stays
    assert "; my/image:1 is used" in d.notes[0]
    # .python-version is then ignored, as after any runtime.txt that decides
    d = decide(["runtime.txt", ".python-version"], runtime_txt=text, python_version="3.99")
    assert d.notes[-1] == ".python-version ignored: runtime.txt names the Python version"


def test_environment_yml_takes_precedence_over_requirements_txt():
    """repo2docker's rule (its conda buildpack does not install requirements.txt); as
    binder-examples/voila has both files."""
    d = decide(["environment.yml", "requirements.txt", "index.ipynb"])
    assert d.decided_by == ("environment.yml",)
    assert d.notes == ("requirements.txt ignored: environment.yml names the environment",)
    _, lines = dockerfile(["environment.yml", "requirements.txt"])
    assert not any("aicoe-env requirements" in line for line in lines)


def test_no_versions_offered_says_none():
    with pytest.raises(BuildRequestError, match=r"versions offered: none"):
        env.decide(["runtime.txt"], {"runtime.txt": "python-3.11"}, env.EnvSettings())


def test_an_explicit_base_image_wins_over_runtime_txt():
    d = decide(["runtime.txt"], runtime_txt="python-2.7", base_image="my/image:1")
    assert d.base_image == "" and d.python_version == "2.7"
    assert any("the base image my/image:1 is used" in n for n in d.notes)


def test_apt_names_are_checked():
    e = refused(["apt.txt"], apt_txt="curl\n$(reboot)\n")
    assert e.field == "apt.txt" and "'$(reboot)' is not a Debian package name" in e.why


def test_a_file_too_large_to_read_is_refused():
    with pytest.raises(BuildRequestError, match="larger than 64 KiB") as e:
        env.decide(["requirements.txt"], {"requirements.txt": None}, S)
    assert e.value.field == "requirements.txt"


def test_pyproject_without_build_system_is_not_installed():
    d = decide(["pyproject.toml", "requirements.txt"], pyproject_toml='[project]\nname = "x"\n')
    assert d.decided_by == ("requirements.txt",)
    assert "pyproject.toml has no [build-system]: not installed" in d.notes


# -- overlays (AICoE-CI's copy-in rule) ------------------------------------------------------


def test_overlay_view_removes_root_pipfiles_and_copies_the_overlay():
    paths = [
        "Pipfile",
        "Pipfile.lock",
        "README.md",
        "requirements.txt",
        "overlays/cpu/Pipfile",
        "overlays/cpu/Pipfile.lock",
        "overlays/cpu/Dockerfile",
        "overlays/cpu/.hidden",
        "overlays/cpu/sub/x.txt",
        "overlays/gpu/Dockerfile",
    ]
    view = env.overlay_view(paths, "cpu")
    assert view["Pipfile.lock"] == "overlays/cpu/Pipfile.lock"
    assert view["Dockerfile"] == "overlays/cpu/Dockerfile"
    assert view["sub/x.txt"] == "overlays/cpu/sub/x.txt"
    assert view["README.md"] == "README.md"
    assert ".hidden" not in view  # a shell glob does not copy dot-files
    assert env.overlay_view(paths, "") == {p: p for p in paths}
    # an overlay without its own lock loses the root one
    view = env.overlay_view(paths, "gpu")
    assert "Pipfile" not in view and "Pipfile.lock" not in view
    assert decide(list(view)).decided_by == ("Dockerfile",)
    d = decide(list(env.overlay_view(["Pipfile", "Pipfile.lock", "overlays/x/apt.txt"], "x")))
    assert d.decided_by == ("apt.txt",)


# -- the generated Dockerfile -------------------------------------------------------------


PREFIX = re.compile(r"^RUN (?:[A-Z_]+=\S+ )+/usr/local/bin/aicoe-env ")


def dockerfile(paths, raw=False, **kw):
    """(decision, Dockerfile lines); the build-time variables before each step are left out
    unless ``raw``."""
    d = decide(paths, **kw)
    text = generated.environment_dockerfile(
        d, d.base_image or S.base_image, S, files_of(paths, **kw)
    )
    lines = text.splitlines()
    if not raw:
        lines = [PREFIX.sub("RUN /usr/local/bin/aicoe-env ", line) for line in lines]
    return d, lines


def index_of(lines, prefix):
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_environment_files_are_copied_and_installed_before_the_rest():
    _, lines = dockerfile(["requirements.txt", "apt.txt", "postBuild", "nb.ipynb"])
    assert lines[0] == f"FROM {S.base_image}"
    copy_req = lines.index("COPY --chown=1000:100 requirements.txt /home/jovyan/requirements.txt")
    install = lines.index("RUN /usr/local/bin/aicoe-env requirements /home/jovyan/requirements.txt")
    rest = lines.index("COPY --chown=1000:100 . /home/jovyan/")
    apt = index_of(lines, "RUN printf '%s\\n' 'deb [trusted=yes]")
    post = lines.index("RUN /usr/local/bin/aicoe-env postbuild /home/jovyan/postBuild")
    user = lines.index("USER 1000:100")
    assert apt < copy_req < install < rest < user < post
    assert lines[apt].endswith("/usr/local/bin/aicoe-env apt apt.txt curl libgomp1 jq")
    assert lines.index("USER root") < apt  # apt as root; postBuild as the notebook user
    assert 'LABEL "io.aicoe-spawner.decided-by"="apt.txt requirements.txt postBuild"' in lines


def test_the_index_is_a_variable_of_the_steps_only():
    _, lines = dockerfile(["requirements.txt"], raw=True)
    [install] = [line for line in lines if "/aicoe-env requirements " in line]
    assert install == (
        f"RUN AICOE_BASE_IMAGE={S.base_image} AICOE_HOME=/home/jovyan "
        "PIP_INDEX_URL=http://10.1.0.1:8081/simple/ UV_INDEX_URL=http://10.1.0.1:8081/simple/ "
        "UV_DEFAULT_INDEX=http://10.1.0.1:8081/simple/ PIP_TRUSTED_HOST=10.1.0.1 "
        "UV_INSECURE_HOST=10.1.0.1 /usr/local/bin/aicoe-env requirements "
        "/home/jovyan/requirements.txt"
    )
    # not left in the image's environment; no ARG steps (buildah 1.28's cache misses after one)
    assert not any(line.startswith(("ENV ", "ARG ")) for line in lines)
    assert sum(line.startswith("LABEL ") for line in lines) == 1


def test_the_helper_is_the_same_layer_for_every_build():
    _, a = dockerfile(["requirements.txt"])
    _, b = dockerfile(["Pipfile.lock", "start"])
    helper = index_of(a, "RUN mkdir -p /usr/local/bin && printf '%s\\n' '#!/bin/sh'")
    assert a[helper] == b[index_of(b, "RUN mkdir -p /usr/local/bin && printf '%s\\n' '#!/bin/sh'")]


@pytest.mark.parametrize(
    "paths, install, project",
    [
        (["Pipfile", "Pipfile.lock"], "pipenv /home/jovyan/Pipfile.lock", None),
        (["Pipfile.lock", "setup.py"], "pipenv /home/jovyan/Pipfile.lock", "setup.py --no-deps"),
        (["pyproject.toml", "uv.lock"], "uv /home/jovyan/uv.lock", "pyproject.toml --no-deps"),
        (["pylock.toml"], "pylock /home/jovyan/pylock.toml", None),
        (
            ["requirements.txt", "setup.py"],
            "requirements /home/jovyan/requirements.txt",
            "setup.py",
        ),
        (["pyproject.toml"], None, "pyproject.toml"),
        (["binder/requirements.txt"], "requirements /home/jovyan/binder/requirements.txt", None),
    ],
)
def test_each_python_file_kind_installs_with_its_tool(paths, install, project):
    _, lines = dockerfile(paths)
    rest = lines.index("COPY --chown=1000:100 . /home/jovyan/")
    runs = [
        line
        for line in lines
        if line.startswith("RUN /usr/local/bin/aicoe-env ") and " home " not in line
    ]
    if install:
        at = lines.index(f"RUN /usr/local/bin/aicoe-env {install}")
        assert at < rest
        for p in paths:  # every file the install reads is copied before it
            if p != "setup.py":
                assert lines.index(f"COPY --chown=1000:100 {p} /home/jovyan/{p}") < at
    if project:
        name, _, flags = project.partition(" ")
        line = f"RUN /usr/local/bin/aicoe-env project /home/jovyan/{name}" + (
            f" {flags}" if flags else ""
        )
        assert lines.index(line) > rest  # a project needs its whole source
    deferred = install.split()[0] in ("pipenv", "uv") if install else False
    if deferred:  # the lock's local paths (-e ., ./libs/x) install once the source is there
        lock = install.split()[1]
        at = lines.index(f"RUN /usr/local/bin/aicoe-env deferred {lock}")
        assert rest < at
        if project:
            assert at < lines.index(line)
    assert len(runs) == bool(install) + bool(project) + deferred


def test_requirements_naming_local_paths_install_after_the_copy():
    _, lines = dockerfile(["requirements.txt", "setup.py"], requirements_txt="-e .\nnumpy\n")
    rest = lines.index("COPY --chown=1000:100 . /home/jovyan/")
    at = lines.index("RUN /usr/local/bin/aicoe-env requirements /home/jovyan/requirements.txt")
    assert at > rest
    assert "COPY --chown=1000:100 requirements.txt /home/jovyan/requirements.txt" not in lines


def test_runtime_and_conda_and_start():
    _, lines = dockerfile(["runtime.txt", "environment.yml", "start"])
    assert lines[0] == "FROM nb:3.11"
    assert "RUN /usr/local/bin/aicoe-env python runtime.txt 3.11" in lines
    assert "RUN /usr/local/bin/aicoe-env conda /home/jovyan/environment.yml" in lines
    assert lines[-2:] == [
        'ENTRYPOINT ["/usr/local/bin/aicoe-repo-start"]',
        'CMD ["jupyterhub-singleuser"]',
    ]
    start = lines.index("RUN install -m 0755 /home/jovyan/start /usr/local/bin/aicoe-repo-start")
    assert (
        lines.index("COPY --chown=1000:100 . /home/jovyan/") < start < lines.index("USER 1000:100")
    )


def test_postbuild_files_get_the_home_rule_too():
    _, lines = dockerfile(["requirements.txt", "postBuild"])
    post = lines.index("RUN /usr/local/bin/aicoe-env postbuild /home/jovyan/postBuild")
    assert lines[post - 2 : post] == ["USER 1000:100", "WORKDIR /home/jovyan"]
    assert lines[post + 1 :] == [
        "USER root",
        "RUN /usr/local/bin/aicoe-env home /home/jovyan",
        "USER 1000:100",
    ]


def test_content_only_copies_the_repository_onto_the_base_image():
    d, lines = dockerfile(["nb.ipynb"])
    assert d.kind == "content-only"
    assert [line for line in lines if line.startswith(("COPY", "RUN /usr"))] == [
        "COPY --chown=1000:100 . /home/jovyan/",
        "RUN /usr/local/bin/aicoe-env home /home/jovyan",
    ]
    # the home folder is writable by group 0 too (an arbitrary uid on OpenShift), as root
    assert lines[-4:] == [
        "COPY --chown=1000:100 . /home/jovyan/",
        "RUN /usr/local/bin/aicoe-env home /home/jovyan",
        "USER 1000:100",
        "WORKDIR /home/jovyan",
    ]
    assert lines[1] == "USER root"


def test_the_environment_part_has_nothing_of_the_commit():
    """Above the marker: the base image, the helper, apt.txt, the package files and their
    installs; the labels (the commit) and the repository are below it, so that the
    environment image is the same for every commit with the same environment files."""
    labels = {"io.openshift.build.commit.id": "c0ffee"}
    files = {"apt.txt": "cowsay\n", "requirements.txt": "requests==2.32.3\n"}
    d = env.decide(["apt.txt", "requirements.txt", "postBuild", "nb.ipynb"], files, S)
    text = generated.environment_dockerfile(d, "base:1", S, files, labels)
    above, below = text.split(env.ENVIRONMENT_MARKER + "\n")
    assert "c0ffee" not in above and "LABEL" not in above
    assert above.splitlines()[0] == "FROM base:1"
    assert "COPY --chown=1000:100 requirements.txt /home/jovyan/requirements.txt" in above
    assert "aicoe-env requirements /home/jovyan/requirements.txt" in above
    assert "aicoe-env apt apt.txt cowsay" in above
    assert below.splitlines()[0].startswith('LABEL "io.aicoe-spawner.decided-by"')
    assert "c0ffee" in below.splitlines()[0]
    assert below.splitlines()[1] == "COPY --chown=1000:100 . /home/jovyan/"
    assert "FROM" not in below and "postbuild" in below


# -- the helper script's own checks (run with this machine's sh and Python) ---------------


def run_helper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "aicoe-env"
    script.write_text(generated.HELPER_SCRIPT)
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(
        ["sh", str(script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": path, "AICOE_HOME": str(tmp_path), "AICOE_BASE_IMAGE": "b:1"},
        timeout=60,
    )


def test_helper_refuses_a_base_image_with_another_python(tmp_path):
    got = run_helper(tmp_path, "python", "runtime.txt", "3.1")
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert got.returncode == 1
    assert (
        f"aicoe-build-error: runtime.txt asks for Python 3.1, but the base image b:1 has Python "
        f"{mine}" in got.stderr
    )
    assert run_helper(tmp_path, "python", "runtime.txt", mine).returncode == 0


def test_helper_reports_a_failing_postbuild(tmp_path):
    (tmp_path / "postBuild").write_text("echo preparing\nexit 3\n")  # no shebang, not executable
    got = run_helper(tmp_path, "postbuild", str(tmp_path / "postBuild"))
    assert got.returncode == 1 and "preparing" in got.stdout
    assert "aicoe-build-error: postBuild exited with code 3" in got.stderr
    (tmp_path / "postBuild").write_text("#!/bin/sh\ntouch done\n")
    assert run_helper(tmp_path, "postbuild", str(tmp_path / "postBuild")).returncode == 0
    assert (tmp_path / "done").exists()


def test_helper_says_when_conda_is_missing(tmp_path):
    got = run_helper(tmp_path, "conda", str(tmp_path / "environment.yml"))
    if got.returncode == 0:  # pragma: no cover - a machine with conda
        pytest.fail("this machine has conda; the refusal cannot be shown")
    assert "aicoe-build-error: environment.yml needs conda or mamba, and the base image b:1" in (
        got.stderr
    )


# -- through resolve_spec and the backends' manifests --------------------------------------


def resolved(paths, body=None, ci=None, **defaults):
    from aicoe_spawner.builder.requests import (
        BuildDefaults,
        BuildRequest,
        RepoView,
        resolve_spec,
    )

    request = BuildRequest(repo="https://github.com/org/repo", ref="v1", **(body or {}))
    d = BuildDefaults(
        namespace="nb",
        registry="reg.local:5000",
        python_base_images=(("3.11", "nb:3.11"),),
        **defaults,
    )
    context = (body or {}).get("context_dir") or (ci.context_dir if ci else "")
    wanted = env.wanted_files(paths, "", context)
    view = RepoView(tuple(paths), {p: READ[p.rsplit("/", 1)[-1]] for p in wanted})
    return resolve_spec(request, "a" * 40, "tag", ci, d, "alice", view=view)


def test_detection_decides_the_spec_and_says_so():
    s = resolved(["requirements.txt", "nb.ipynb"])
    assert (s.strategy, s.decided_by) == ("environment", ("requirements.txt",))
    assert s.base_image == "quay.io/jupyter/minimal-notebook:2025-10-06"
    assert "detected: environment build from requirements.txt" in s.notes
    assert s.generated_dockerfile.startswith(f"FROM {s.base_image}\n")
    assert '"io.openshift.build.commit.id"="' + "a" * 40 + '"' in s.generated_dockerfile
    d = resolved(["binder/Dockerfile", "requirements.txt"])
    assert (d.strategy, d.dockerfile, d.decided_by) == (
        "dockerfile",
        "binder/Dockerfile",
        ("binder/Dockerfile",),
    )
    assert d.generated_dockerfile == "" and "detected: Dockerfile build from binder/Dockerfile" in (
        d.notes
    )
    c = resolved(["nb.ipynb"])
    assert c.strategy == "environment" and c.decided_by == ()
    assert any("the repository's content on the notebook image" in n for n in c.notes)
    assert resolved(["runtime.txt"]).base_image == "nb:3.11"


def test_a_request_that_names_a_dockerfile_is_not_detected():
    s = resolved(["requirements.txt"], {"dockerfile": "docker/Dockerfile"})
    assert (s.strategy, s.dockerfile, s.decided_by) == ("dockerfile", "docker/Dockerfile", ())


def test_source_without_a_base_image_is_an_environment_build_and_thoth_gets_its_variables():
    s = resolved(["requirements.txt"], {"strategy": "source"})
    assert s.strategy == "environment" and s.decided_by == ("requirements.txt",)
    thoth = "quay.io/thoth-station/s2i-thoth-ubi9-py311:v0.35.1"
    t = resolved(["Pipfile", "Pipfile.lock"], {"strategy": "source", "base_image": thoth})
    assert (t.strategy, t.base_image) == ("source", thoth)
    assert dict(t.build_env) == {
        "THOTH_ADVISE": "0",
        "THOTH_DRY_RUN": "1",
        "THOTH_ERROR_FALLBACK": "1",
    }
    other = resolved([], {"strategy": "source", "base_image": "quay.io/x/s2i:1"})
    assert other.build_env == ()


def test_context_dir_is_where_detection_looks():
    s = resolved(["app/requirements.txt", "Dockerfile"], {"context_dir": "app"})
    assert (s.strategy, s.decided_by) == ("environment", ("requirements.txt",))


def test_the_generated_dockerfile_and_the_overlay_reach_the_build_pod():
    from aicoe_spawner.builder.backends.kubernetes_job import BUILD_SCRIPT, JobConfig, job_manifest
    from aicoe_spawner.builder.ci_config import parse_ci_configs

    ci = parse_ci_configs("overlays:\n- name: cpu\n  build: {}\n")[0]
    view = env.overlay_view(["overlays/cpu/requirements.txt", "nb.ipynb"], "cpu")
    s = resolved(list(view), ci=ci, layer_cache=True)
    job = job_manifest(s, JobConfig())
    [build] = job["spec"]["template"]["spec"]["initContainers"]
    e = {x["name"]: x["value"] for x in build["env"]}
    assert e["STRATEGY"] == "environment" and e["OVERLAY"] == "cpu"
    assert e["GENERATED_DOCKERFILE"] == s.generated_dockerfile
    assert e["DECIDED_BY"] == "requirements.txt"
    assert e["CACHE_REPO"] == "reg.local:5000/nb/org-repo-cpu-cache"
    assert build["terminationMessagePath"] == "/dev/termination-log"
    assert build["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert (
        BUILD_SCRIPT.splitlines()[1]
        == "fail() {  # the build's reason, for the record's message (termination message)"
    )
    # no cache unless the admin turns it on
    plain = job_manifest(resolved(["requirements.txt"]), JobConfig())
    [build] = plain["spec"]["template"]["spec"]["initContainers"]
    assert "CACHE_REPO" not in {x["name"] for x in build["env"]}


def test_openshift_builds_the_generated_dockerfile_inline_and_refuses_overlays():
    from aicoe_spawner.builder.backends.openshift import buildconfig_manifest, validate_spec
    from aicoe_spawner.builder.ci_config import parse_ci_configs

    s = resolved(["requirements.txt"])
    bc = buildconfig_manifest(s)
    assert bc["spec"]["source"]["dockerfile"] == s.generated_dockerfile
    assert bc["spec"]["strategy"] == {"type": "Docker", "dockerStrategy": {}}
    ci = parse_ci_configs("overlays:\n- name: cpu\n  build: {}\n")[0]
    with pytest.raises(BuildRequestError, match="cannot copy overlays/cpu/"):
        validate_spec(resolved(["requirements.txt"], ci=ci))


def test_the_spec_round_trips_through_its_record():
    from aicoe_spawner.builder.requests import BuildSpec

    s = resolved(["requirements.txt", "apt.txt"])
    assert BuildSpec.from_json(s.to_json()) == s


def test_settings_change_the_build():
    a = resolved(["requirements.txt"])
    b = resolved(["requirements.txt"], package_index_url="http://10.0.0.9/simple/")
    assert a.content_id != b.content_id
    assert " PIP_INDEX_URL=http://10.0.0.9/simple/ " in b.generated_dockerfile


# -- what the survey of real repositories found (docs/builder.md, "What a repository is built
# as"); each case names the repository it comes from --------------------------------------


@pytest.mark.parametrize(
    "text, version",
    [
        # binder-examples/conda; jupyterlab/jupyterlab-demo (.binder): as repo2docker reads them
        ("dependencies:\n  - python=3.11\n  - numpy\n", "3.11"),
        ("dependencies:\n- ruamel.yaml\n- python=3.12\n", "3.12"),
        ("dependencies:\n  - python==3.12.*\n", "3.12"),
        ("dependencies:\n  - python 3.11.4\n", "3.11"),
    ],
)
def test_environment_yml_pinning_python_builds_on_that_pythons_image(text, version):
    """repo2docker builds the Python an environment.yml pins; ``conda env update`` into the
    server's environment would otherwise replace its Python (or fail to solve)."""
    d, lines = dockerfile(["environment.yml", "index.ipynb"], environment_yml=text)
    assert (d.python_version, d.base_image) == (version, S.python_base_images[version])
    assert d.python_source == "environment.yml"
    assert f"RUN /usr/local/bin/aicoe-env python environment.yml {version}" in lines


@pytest.mark.parametrize(
    "text, pin, version",
    [
        # ageron/handson-ml3 (python=3.10, with a comment), jakevdp/PythonDataScienceHandbook
        # (python=3.5), ipython/ipython-in-depth's binder/environment.yml (python=3.6)
        ("dependencies:\n  - python=3.10  # your beloved language\n", "python=3.10", "3.10"),
        (
            "dependencies:\n  - python=3.5\n  - pip:\n    - -r requirements.txt\n",
            "python=3.5",
            "3.5",
        ),
        ("dependencies:\n  - python=2\n", "python=2", "2.7"),
    ],
)
def test_environment_yml_pinning_a_python_not_offered_is_refused_naming_the_pin(text, pin, version):
    e = refused(["environment.yml", "requirements.txt"], environment_yml=text)
    assert e.field == "environment.yml"
    assert e.why.startswith(f"Python {version} is not offered by this builder (versions offered:")
    assert f"change the pin {pin!r} in environment.yml" in e.why


def test_environment_yml_without_a_version_pin_and_python_3_use_the_base_images_python():
    # binder-examples/python-conda_pip ("- python"), binder-examples/bokeh (no python)
    for text in ("dependencies:\n  - python\n  - numpy\n", "dependencies:\n  - bokeh\n"):
        d = decide(["environment.yml"], environment_yml=text)
        assert (d.python_version, d.base_image, d.notes) == ("", "", ())
    d = decide(["environment.yml"], environment_yml="dependencies:\n  - python=3\n")
    assert d.notes == ("environment.yml pins 'python=3': the base image's Python 3",)


def test_environment_yml_pinning_python_wins_over_runtime_txt():
    d = decide(
        ["environment.yml", "runtime.txt"],
        environment_yml="dependencies:\n  - python=3.12\n",
        runtime_txt="python-3.11\n",
    )
    assert (d.python_version, d.python_source) == ("3.12", "environment.yml")
    assert d.notes == ("runtime.txt ignored: environment.yml pins the Python version",)
    d = decide(
        ["environment.yml"], environment_yml="dependencies:\n  - python=3.5\n", base_image="my/i:1"
    )
    assert d.notes == ("environment.yml asks for Python 3.5; the base image my/i:1 is used",)


@pytest.mark.parametrize(
    "text, why",
    [
        ("dependencies: [numpy\n", "not valid YAML, which conda cannot read"),
        ("- numpy\n- pandas\n", "must be a YAML mapping"),
        ("dependencies: numpy\n", "its dependencies must be a list"),
    ],
)
def test_an_environment_yml_conda_cannot_read_is_refused_naming_it(text, why):
    e = refused(["binder/environment.yml"], environment_yml=text)
    assert e.field == "binder/environment.yml" and why in e.why


def test_environment_yaml_is_honoured_as_repo2docker_honours_it():
    """repo2docker's conda buildpack reads environment.yml, else environment.yaml."""
    d, lines = dockerfile(["binder/environment.yaml", "binder/postBuild"])
    assert d.decided_by == ("binder/environment.yaml", "binder/postBuild")
    assert "RUN /usr/local/bin/aicoe-env conda /home/jovyan/binder/environment.yaml" in lines
    d = decide(["environment.yml", "environment.yaml", "requirements.txt"])
    assert d.decided_by == ("environment.yml",)
    assert "environment.yaml ignored: environment.yml is read first" in d.notes


def test_environment_yml_whose_pip_list_names_repository_files_installs_after_the_copy():
    """jakevdp/PythonDataScienceHandbook's ``pip: [-r requirements.txt]``: conda runs pip
    beside the file, so the repository must be there (repo2docker does the same)."""
    text = "dependencies:\n  - numpy\n  - pip:\n    - -r requirements.txt\n"
    _, lines = dockerfile(["environment.yml", "requirements.txt"], environment_yml=text)
    conda = lines.index("RUN /usr/local/bin/aicoe-env conda /home/jovyan/environment.yml")
    assert conda > lines.index("COPY --chown=1000:100 . /home/jovyan/")
    assert not any(line.startswith("COPY --chown=1000:100 environment.yml") for line in lines)
    _, lines = dockerfile(["environment.yml"])  # nothing local: in the environment image
    conda = lines.index("RUN /usr/local/bin/aicoe-env conda /home/jovyan/environment.yml")
    assert conda < lines.index(env.ENVIRONMENT_MARKER)


@pytest.mark.parametrize(
    "pipfile, version, base",
    [
        ('[requires]\npython_version = "3.12"\n', "3.12", S.python_base_images["3.12"]),
        ('[requires]\npython_full_version = "3.11.4"\n', "3.11", "nb:3.11"),
    ],
)
def test_a_pipfiles_python_version_chooses_the_base_image(pipfile, version, base):
    """repo2docker's Pipfile buildpack builds the Python the Pipfile requires."""
    d = decide(["Pipfile", "Pipfile.lock"], Pipfile=pipfile)
    assert (d.python_version, d.base_image, d.python_source) == (version, base, "Pipfile")


def test_a_pipfiles_python_version_not_offered_is_noted_not_refused():
    """binder-examples/pipfile (3.6), aicoe-aiops/project-template (3.8): pipenv writes the
    developer's Python there; the lock may well install on another."""
    d = decide(["Pipfile", "Pipfile.lock"], Pipfile='[requires]\npython_version = "3.6"\n')
    assert (d.kind, d.python_version, d.base_image) == ("environment", "", "")
    assert d.notes[0].startswith(
        "Pipfile asks for Python 3.6 ([requires] python_version), which this builder does not "
        "offer (versions offered: 3.11, 3.12): the base image's Python"
    )
    d = decide(
        ["Pipfile", "Pipfile.lock", "runtime.txt"], Pipfile='[requires]\npython_version = "3.6"\n'
    )
    assert (d.python_version, d.python_source) == ("3.11", "runtime.txt")  # runtime.txt first


@pytest.mark.parametrize(
    "text, version",
    [("python 3.11\n", "3.11"), ("python=3.12\n", "3.12"), ("python==3.11\n", "3.11")],
)
def test_runtime_txt_with_a_space_or_equals_sign_names_the_version(text, version):
    assert decide(["runtime.txt"], runtime_txt=text).python_version == version


@pytest.mark.parametrize("text", ["R-4.2\n", "r-devel\n", "r-release-2024-01-01\n"])
def test_other_r_runtime_forms_are_refused_as_r(text):
    e = refused(["runtime.txt"], runtime_txt=text)
    assert "asks for an R environment" in e.why


def test_a_byte_order_mark_is_not_part_of_the_first_line():
    """A file saved by an editor as "UTF-8 with BOM" (or PowerShell's UTF-16)."""
    assert env_files.decode_text(b"\xef\xbb\xbfpython-3.11\n") == "python-3.11\n"
    assert env_files.decode_text("python-3.12\n".encode("utf-16")) == "python-3.12\n"
    assert env_files.decode_text(b"numpy\xff\n") == "numpy\ufffd\n"
    assert decide(["runtime.txt"], runtime_txt="\ufeffpython-3.11\n").python_version == "3.11"
    assert decide([".python-version"], python_version="\ufeff3.12\n").python_version == "3.12"
    assert env.apt_packages("apt.txt", "\ufeffcurl\n") == ("curl",)


@pytest.mark.parametrize(
    "line, local",
    [
        ("numpy==2.1.0", False),
        ("-e .", True),
        ("-rrequirements/base.txt", True),
        ("--requirement=base.txt", True),
        ("libs/mypkg", True),  # pip reads a name with a slash as a path
        ("wheels/tool-1.0-py3-none-any.whl", True),
        ("tool-1.0-py3-none-any.whl", True),
        ("--find-links ./wheels", True),
        ("-f wheels", True),
        ("--find-links=https://download.pytorch.org/whl/torch_stable.html", False),
        ("--extra-index-url https://download.pytorch.org/whl/cpu", False),
        ("pkg @ file:///srv/pkg", True),
        ("pkg @ https://example.org/pkg-1.0.tar.gz", False),
        ("git+https://github.com/org/pkg.git#egg=pkg", False),
        ('numpy; python_version < "3.12"  # see ./docs', False),
        ("--no-binary :all:", False),
    ],
)
def test_requirements_lines_that_need_the_repository(line, local):
    assert env_files.is_local_requirement(line) is local
    _, lines = dockerfile(["requirements.txt"], requirements_txt=f"{line}\n")
    copied = "COPY --chown=1000:100 requirements.txt /home/jovyan/requirements.txt" in lines
    assert copied is not local
