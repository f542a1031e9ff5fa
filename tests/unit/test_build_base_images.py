"""The build script's base-image step, run by a real POSIX shell: the FROM lines of a
Dockerfile are read as data (stages, scratch and unresolvable arguments left out), and each
base image is pulled once with no retries; a failed pull ends the build with a message that
names the image and the registry's answer (the record's message)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from aicoe_spawner.builder.backends.kubernetes_job import BUILD_SCRIPT


def shell_function(name: str) -> str:
    """The text of function ``name`` in BUILD_SCRIPT (defined at column 0, ends at ``}``)."""
    match = re.search(rf"^{name}\(\) \{{.*?^\}}$", BUILD_SCRIPT, re.S | re.M)
    assert match, f"no function {name} in BUILD_SCRIPT"
    return match[0]


def base_images(tmp_path: Path, dockerfile: str) -> list[str]:
    path = tmp_path / "Dockerfile"
    path.write_text(dockerfile)
    script = f'set -eu\n{shell_function("base_images")}\nbase_images "$1"\n'
    proc = subprocess.run(
        ["sh", "-c", script, "sh", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        (
            "FROM quay.io/jupyter/minimal-notebook:latest\nRUN true\n",
            ["quay.io/jupyter/minimal-notebook:latest"],
        ),
        (
            "# a comment\nfrom --platform=linux/amd64 docker.io/library/python:3.11 AS build\n"
            "RUN pip wheel .\nFROM build AS test\nFROM scratch\nCOPY --from=build /x /x\n"
            "FROM registry.local:5000/nb@sha256:" + "a" * 64 + "\n",
            ["docker.io/library/python:3.11", "registry.local:5000/nb@sha256:" + "a" * 64],
        ),
        (
            'ARG BASE_IMAGE="quay.io/org/base:1"\nARG OTHER\nFROM ${BASE_IMAGE}\n'
            "FROM $BASE_IMAGE AS again\nFROM $OTHER\nFROM ${BASE_IMAGE}-suffix\n",
            ["quay.io/org/base:1", "quay.io/org/base:1"],
        ),
        ("FROM\nFROM *\n", ["*"]),  # a glob is data, not expanded against the checkout
        (
            # not instructions: continuation lines, a heredoc's Python, a bare "from"
            'FROM base:1\nRUN python3 -c "\\\nfrom os import path" && \\\n  from x\n'
            "RUN python3 - <<EOF\nfrom os import path\nfrom . import x\nEOF\n",
            ["base:1"],
        ),
        ("FROM a\\\n  b\nFROM c", ["a\\", "c"]),  # no newline at the end still read
    ],
)
def test_base_images_are_the_from_lines_read_as_data(tmp_path, dockerfile, expected):
    (tmp_path / "decoy").write_text("")  # what `*` would expand to if it were globbed
    assert base_images(tmp_path, dockerfile) == expected


def test_no_command_in_a_from_line_or_arg_default_runs(tmp_path):
    got = base_images(tmp_path, "ARG X=$(>ran)\nFROM $X\nFROM $(>ran)\nFROM `>ran`\n")
    assert not (tmp_path / "ran").exists()
    assert got == ["`>ran`"]  # a name the pull then refuses, never a command


def run_pull(
    tmp_path: Path, fake_buildah: str, *images: str, limit: int = 600
) -> tuple[int, str, str, str]:
    """pull_base for ``images`` with a stand-in buildah; (exit code, termination message,
    stderr, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    buildah = bin_dir / "buildah"
    buildah.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n{fake_buildah}\n')
    buildah.chmod(0o755)
    term = tmp_path / "termination-log"
    script = "\n".join(
        [
            "set -eu",
            shell_function("fail"),
            'B="--storage-driver vfs"; TLS="--tls-verify=true"; pulled=" "',
            shell_function("pull_base"),
            *(f"pull_base '{image}'" for image in images),
        ]
    )
    proc = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "BUILD_TERMINATION_LOG": str(term),
            "PULL_TIMEOUT": str(limit),
        },
    )
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    return proc.returncode, term.read_text() if term.exists() else "", proc.stderr, calls


def test_an_unpullable_base_image_fails_naming_the_image_and_the_registry_answer(tmp_path):
    answer = (
        "Error: initializing source docker://quay.io/jupyter/minimal-notebook:latest: pinging "
        'container registry quay.io: Get "https://quay.io/v2/": dial tcp: lookup quay.io on '
        "10.244.10.1:53: server misbehaving"
    )
    code, message, stderr, calls = run_pull(
        tmp_path,
        f"echo progress; echo '{answer}' >&2; exit 125",
        "quay.io/jupyter/minimal-notebook:latest",
    )
    assert code == 2
    assert message.strip() == (
        f"base image quay.io/jupyter/minimal-notebook:latest cannot be pulled: {answer}"
    )
    assert "error: base image quay.io/jupyter/minimal-notebook:latest" in stderr
    # one attempt, no retries, the TLS setting passed on
    assert calls.strip() == (
        "--storage-driver vfs pull -q --retry 0 --tls-verify=true -- "
        "quay.io/jupyter/minimal-notebook:latest"
    )


def test_a_pull_that_hangs_fails_after_the_limit(tmp_path):
    code, message, _, _ = run_pull(tmp_path, "exec sleep 30", "registry.example/slow:1", limit=1)
    assert code == 2
    assert (
        message.strip()
        == "base image registry.example/slow:1 cannot be pulled: no answer within 1 s"
    )


def test_each_base_image_is_pulled_once_and_the_build_goes_on(tmp_path):
    code, message, _, calls = run_pull(tmp_path, "exit 0", "a:1", "b:2", "a:1")
    assert code == 0 and message == ""
    assert [line.rsplit(" ", 1)[-1] for line in calls.splitlines()] == ["a:1", "b:2"]
