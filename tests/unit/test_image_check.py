"""The image check: the build script's decisions and messages (run by /bin/sh against a
stand-in for ``buildah`` that runs the probe on this machine, as the image's user or as an
arbitrary uid in group 0), the report's parsing from the push step's termination message, and
the tag annotations a passing build writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from test_builder_backends import spec

from aicoe_spawner.builder.__main__ import hub_version_of
from aicoe_spawner.builder.backends.kubernetes_job import (
    BUILD_SCRIPT,
    JobConfig,
    job_manifest,
    job_state,
)
from aicoe_spawner.builder.backends.openshift import buildconfig_manifest
from aicoe_spawner.builder.image_check import (
    ANY_UID,
    CHECK_SCRIPT,
    OPENSHIFT_HOOK,
    PROBE,
    REPORT_BUDGET,
    REPORT_PY,
    packages,
    parse_termination,
)
from aicoe_spawner.builder.imagestream import (
    SOFTWARE_ANNOTATION,
    new_stream,
    with_status_tag,
    with_tag,
)
from aicoe_spawner.catalog import parse_imagestream

D = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
IMAGE_UID = 1000

# buildah's stand-in: `from` names a container; `run [--user u:g] ctr -- cmd...` runs cmd here,
# as IMAGE_UID (the image's user) or as the --user given.
FAKE_BUILDAH = r"""#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in from) echo ctr; exit 0 ;; rm) exit 0 ;; run) shift; break ;; *) shift ;; esac
done
user="$IMAGE_USER"
while [ $# -gt 0 ]; do
  case "$1" in --user) user=$2; shift 2 ;; --) shift; break ;; *) shift ;; esac
done
exec setpriv --reuid="${user%:*}" --regid="${user#*:}" --clear-groups -- "$@"
"""


@pytest.fixture
def tmp_path(open_tmp):
    """The image's user and the arbitrary uid run in it."""
    return open_tmp


FAIL = BUILD_SCRIPT.split("\n}\n", 1)[0] + "\n}\n"  # `set -eu` and the contract's fail()


def fake_image(root: Path, *, singleuser: str | None = "6.1.1", lab: bool = True) -> dict:
    """A stand-in image: a bin folder (jupyterhub-singleuser run by this machine's Python)
    and site-packages with distributions of the given versions."""
    site = root / "site"
    bin_ = root / "bin"
    bin_.mkdir(parents=True)
    site.mkdir()
    dists = {"pandas": ("2.2.3", ["numpy>=1.26"]), "numpy": ("2.1.0", [])}
    python = bin_ / "python3"  # this machine's Python, without its own site-packages
    python.write_text('#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n')
    if singleuser:
        dists["jupyterhub"] = (singleuser, ["requests"])
        dists["requests"] = ("2.32.3", [])
        script = bin_ / "jupyterhub-singleuser"
        script.write_text(f"#!{python}\nprint({singleuser!r})\n")
    if lab:
        dists["jupyterlab"] = ("4.3.0", ["jupyter_server"])
        dists["jupyter_server"] = ("2.14.0", [])
    for name, (version, requires) in dists.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        (info / "METADATA").write_text("Metadata-Version: 2.1\n" + "\n".join(lines) + "\n")
        (site / name).mkdir()
        (site / name / "__init__.py").write_text("")
    for path in (root, bin_, site, *bin_.iterdir(), *site.rglob("*")):
        path.chmod(0o755 if path.is_dir() or path.parent == bin_ else 0o644)
    return {"PATH": f"{bin_}:/usr/bin:/bin", "PYTHONPATH": str(site)}


def run_check(tmp_path: Path, image_env: dict, *, home_mode=0o775, hub="6.1.1", uid=IMAGE_UID):
    """Run CHECK_SCRIPT as the build step would; (exit code, termination message, report)."""
    tmp_path.mkdir(mode=0o755, exist_ok=True)
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "buildah").write_text(FAKE_BUILDAH)
    (stub / "buildah").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, IMAGE_UID, 0)
    home.chmod(home_mode)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    env = {
        **image_env,
        "PATH": f"{stub}:{image_env['PATH']}",
        "HOME": str(home),
        "IMAGE_USER": f"{uid}:100",
        "HUB_VERSION": hub,
        "CHECK_PROBE": PROBE,
        "CHECK_REPORT": REPORT_PY,
        "WORKSPACE": str(workspace),
        "BUILD_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    script = FAIL + 'B=""\nwork=$(mktemp -d)\n' + CHECK_SCRIPT
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    term = tmp_path / "termination-log"
    report = workspace / "image-report.json"
    return (
        proc.returncode,
        term.read_text() if term.exists() else "",
        json.loads(report.read_text()) if report.exists() else None,
        proc.stdout + proc.stderr,
    )


def test_a_notebook_image_passes_and_reports_its_software_and_top_level_packages(tmp_path):
    code, message, report, out = run_check(tmp_path, fake_image(tmp_path / "image"))
    assert code == 0, out
    assert message == ""
    assert "==> checked: jupyterhub-singleuser 6.1.1 (this hub: 6.1.1)" in out
    assert report["software"] == [
        {"name": "Python", "version": "3.11.2"},
        {"name": "JupyterLab", "version": "4.3.0"},
        {"name": "JupyterHub", "version": "6.1.1"},
    ]
    # top-level only: numpy (pandas needs it), requests and jupyter_server are required
    assert report["dependencies"] == [
        {"name": "jupyterhub", "version": "6.1.1"},
        {"name": "jupyterlab", "version": "4.3.0"},
        {"name": "pandas", "version": "2.2.3"},
    ]


@pytest.mark.parametrize(
    ("image", "kwargs", "expected"),
    [
        (
            {"singleuser": None},
            {},
            "the image has no jupyterhub-singleuser, the program JupyterHub starts: add "
            "`jupyterhub==6.*` to requirements.txt (or `RUN pip install jupyterhub==6.1.1` "
            "to the Dockerfile)",
        ),
        (
            {"singleuser": "4.1.5"},
            {},
            "the image has JupyterHub 4.1.5, this hub runs JupyterHub 6.1.1, and their major "
            "versions must match: add `jupyterhub==6.*` to requirements.txt",
        ),
        ({"lab": False}, {}, "the image has no JupyterLab (`import jupyterlab` fails in"),
        ({}, {"uid": 0}, "the image runs as root (uid 0)"),
        ({}, {"home_mode": 0o555}, "is not writable by the image's user (uid 1000)"),
        (
            {},
            {"home_mode": 0o755},
            "is not writable by an arbitrary user in group 0, as OpenShift runs notebooks: "
            "in the Dockerfile, as root, `RUN chgrp -R 0 ",
        ),
    ],
)
def test_a_failing_check_fails_the_build_saying_what_is_missing_and_how_to_add_it(
    tmp_path, image, kwargs, expected
):
    code, message, report, out = run_check(
        tmp_path, fake_image(tmp_path / "image", **image), **kwargs
    )
    assert code == 2, out
    assert message.startswith("the image cannot be offered as a notebook:\n- ")
    assert expected in " ".join(message.split()), message
    assert report is None


def test_without_the_hubs_version_any_jupyterhub_passes_and_the_advice_has_no_pin(tmp_path):
    code, _, report, out = run_check(
        tmp_path, fake_image(tmp_path / "a", singleuser="4.1.5"), hub=""
    )
    assert code == 0 and report["software"][2] == {"name": "JupyterHub", "version": "4.1.5"}
    assert "(this hub: not known)" in out
    code, message, _, _ = run_check(
        tmp_path / "b", fake_image(tmp_path / "b" / "i", singleuser=None), hub=""
    )
    assert "add `jupyterhub` to requirements.txt" in message


def test_the_report_fits_the_termination_message():
    # a large environment: the Python program drops packages until the report fits
    code = REPORT_PY.replace("m.distributions()", "fake()")
    prelude = (
        "class D:\n    def __init__(s, i):\n        s.metadata = {'Name': 'package-%04d' % i}\n"
        "        s.version = '1.0.%d' % i\n        s.requires = []\n"
        "def fake():\n    return [D(i) for i in range(500)]\n"
    )
    out = subprocess.run(["/usr/bin/python3", "-c", prelude + code], capture_output=True, text=True)
    [line] = [x for x in out.stdout.splitlines() if x.startswith("report=")]
    report = json.loads(line[len("report=") :])
    assert len(line) - len("report=") <= REPORT_BUDGET
    assert 50 < len(report["dependencies"]) < 500
    assert report["dependencies"][0]["name"] == "package-0000"
    # the push step's message: prefix + report stays under Kubernetes' 4096 bytes
    assert len('{"digest":"' + D + '",') + REPORT_BUDGET < 4096


def test_parse_termination_reads_the_digest_only_from_the_push_steps_prefix():
    assert parse_termination(D) == (D, None, None)  # older builders: a bare digest
    assert parse_termination(f'{{"digest":"{D}"}}') == (D, None, None)
    body = {
        "digest": D,
        "software": [
            {"name": "Python", "version": "3.11.2"},
            {"name": "JupyterLab", "version": "4.3.0"},
        ],
        "dependencies": [
            {"name": "pandas", "version": "2.2.3"},
            {"name": "bad name;rm", "version": "1"},
            {"name": "ok", "version": 3},
            "junk",
            {"name": "numpy", "version": ""},
        ],
    }
    digest, software, deps = parse_termination(json.dumps(body, separators=(",", ":")))
    assert digest == D
    assert software == (("Python", "3.11.2"), ("JupyterLab", "4.3.0"))
    assert deps == (("pandas", "2.2.3"), ("numpy", ""))
    # the image's report cannot replace the digest: a second "digest" key drops the report
    injected = f'{{"digest":"{D}","software":[],"dependencies":[]}},"digest":"{D2}","x":{{}}'
    assert parse_termination(injected.replace("}},", "},")) == (D, None, None)
    assert parse_termination(f'{{"digest":"{D}","software":[]}}x') == (D, None, None)
    assert parse_termination(f'{{"software":[],"digest":"{D}"}}')[0] is None
    assert parse_termination("")[0] is None and parse_termination("sha256:zz")[0] is None
    assert len(packages([{"name": f"p{i}", "version": "1"} for i in range(500)], 200)) == 200


def test_a_passing_build_annotates_its_tags_and_the_card_reads_them():
    s = spec(extra_tags=("latest",))
    software = (("Python", "3.11.2"), ("JupyterLab", "4.3.0"), ("JupyterHub", "6.1.1"))
    deps = (("pandas", "2.2.3"),)
    stream = with_status_tag(
        with_tag(new_stream(s), s, "ready", software=software, dependencies=deps), s, D
    )
    for name in ("main", "latest"):
        [tag] = [t for t in stream["spec"]["tags"] if t["name"] == name]
        assert json.loads(tag["annotations"][SOFTWARE_ANNOTATION])[1] == {
            "name": "JupyterLab",
            "version": "4.3.0",
        }
    image = parse_imagestream(stream)
    assert image.tag("main").software[2].name == "JupyterHub"
    assert [(p.name, p.version) for p in image.tag("main").python_dependencies] == [
        ("pandas", "2.2.3")
    ]
    # a follower (same build, another requester) has no report: the annotations stay
    again = with_tag(stream, s, "ready")
    assert again["spec"]["tags"] == stream["spec"]["tags"]


def test_a_failed_rebuild_leaves_the_tag_serving_the_previous_digest_and_software():
    s = spec()
    software = (("JupyterHub", "6.1.1"),)
    served = with_status_tag(with_tag(new_stream(s), s, "ready", software=software), s, D)
    rebuild = spec(id="b2", commit="d" * 40)
    failed = with_tag(with_tag(served, rebuild, "building"), rebuild, "failed", "build failed\n...")
    tag = parse_imagestream(failed).tag("main")
    assert tag.ready and tag.digest == D
    assert tag.build_commit == "c" * 40  # the commit of the image it serves
    assert tag.software[0].version == "6.1.1"
    [spec_tag] = failed["spec"]["tags"]
    assert spec_tag["annotations"]["aicoe-spawner.io/last-build"] == "failed b2"


def test_the_build_step_gets_the_check_and_the_hubs_version():
    manifest = job_manifest(spec(), JobConfig(hub_version="6.1.1"))
    [build] = manifest["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in build["env"]}
    assert env["HUB_VERSION"] == "6.1.1" and env["CHECK_IMAGE"] == "true"
    assert env["CHECK_PROBE"] == PROBE and env["CHECK_REPORT"] == REPORT_PY
    assert build["terminationMessagePath"] == "/dev/termination-log"
    script = build["command"][2]
    # after the build; the archive for the push step is written meanwhile, and the step ends
    # (so the push step may start) only after both, a failed check stopping the archive
    assert script.index("bud ") < script.index(CHECK_SCRIPT) < script.index('wait "$layout_pid"')
    assert 'kill "$layout_pid"' in script[: script.index(CHECK_SCRIPT)]  # in fail()
    assert f'--user "{ANY_UID}:0"' in script
    off = job_manifest(spec(), JobConfig(check_image=False))
    env = {
        e["name"]: e["value"] for e in off["spec"]["template"]["spec"]["initContainers"][0]["env"]
    }
    assert env["CHECK_IMAGE"] == "false"
    assert re.search(r"CHECK_IMAGE:-true}\" = true", CHECK_SCRIPT)


def test_job_state_carries_the_report_of_a_finished_build():
    done = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    message = json.dumps(
        {"digest": D, "software": [{"name": "Python", "version": "3.11.2"}], "dependencies": []},
        separators=(",", ":"),
    )
    pod = {
        "status": {
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}]
        }
    }
    state = job_state(done, [pod])
    assert (state.phase, state.digest) == ("ready", D)
    assert state.software == (("Python", "3.11.2"),) and state.dependencies == ()
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = D
    state = job_state(done, [pod])
    assert state.digest == D and state.software is None and state.dependencies is None


def test_the_hubs_version_is_read_from_its_api_root():
    assert hub_version_of(b'{"version": "6.1.1"}') == "6.1.1"
    assert hub_version_of('{"version": "5.3.0b1"}') == "5.3.0b1"
    for bad in (b"", b"[]", b'{"version": 6}', b'{"version": "x; rm"}', b'{"version": "6 1"}'):
        assert hub_version_of(bad) is None, bad


def run_hook(tmp_path: Path, image_env: dict, hub: str = "6.1.1") -> subprocess.CompletedProcess:
    """The OpenShift postCommit hook as the build controller runs it: in the image, as the
    image's user."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, IMAGE_UID, 100)
    hook = buildconfig_manifest(spec(), check_hub_version=hub)["spec"]["postCommit"]["command"]
    return subprocess.run(
        ["setpriv", f"--reuid={IMAGE_UID}", "--regid=100", "--clear-groups", "--", *hook],
        env={**image_env, "HOME": str(home)},
        capture_output=True,
        text=True,
    )


def test_the_openshift_backend_checks_in_a_post_commit_hook(tmp_path):
    hook = buildconfig_manifest(spec(), check_hub_version="6.1.1")["spec"]["postCommit"]
    assert hook["command"][:3] == ["/bin/sh", "-c", OPENSHIFT_HOOK]
    assert hook["command"][4:] == [PROBE, REPORT_PY, "6.1.1"]
    assert "postCommit" not in buildconfig_manifest(spec())["spec"]
    passed = run_hook(tmp_path / "a", fake_image(tmp_path / "a" / "image"))
    assert passed.returncode == 0, passed.stderr
    assert "==> checked: jupyterhub-singleuser 6.1.1 (this hub: 6.1.1)" in passed.stdout
    failed = run_hook(tmp_path / "b", fake_image(tmp_path / "b" / "image", singleuser=None))
    assert failed.returncode == 2
    assert "error: the image cannot be offered as a notebook:" in failed.stderr
    assert "the image has no jupyterhub-singleuser" in failed.stderr
