"""What environment files say that detection needs before their tools read them (pure):
a small file's bytes as text (:func:`decode_text`), whether a requirements line needs the
repository's files (:func:`is_local_requirement`), the Python an ``environment.yml`` pins and
whether its ``pip:`` list needs the repository (:func:`conda_environment`), the Python a
``Pipfile`` requires (:func:`pipfile_python`). Refusals are :class:`BuildRequestError` (422)
naming the file."""

from __future__ import annotations

import codecs
import re
import tomllib
from dataclasses import dataclass

import yaml

from .fields import BuildRequestError

__all__ = [
    "CondaEnv",
    "conda_environment",
    "decode_text",
    "is_local_requirement",
    "pipfile_python",
]

# a conda dependency pinning Python: python=3.10, python==3.10.*, python 3.10 (match specs)
_CONDA_PYTHON = re.compile(r"python\s*(?:=+|\s)\s*(\d+(?:\.\d+)?)")
_ARCHIVE = re.compile(r"[^/]+\.(whl|tar\.gz|tgz|zip|tar\.bz2)")
_PIPFILE_VERSION = re.compile(r"(\d+)\.(\d+)")


def _refuse(path: str, why: str) -> BuildRequestError:
    return BuildRequestError(path, why, 422)


def decode_text(data: bytes) -> str:
    """A small file's bytes as text, as pip and Python read them: a UTF-8 byte order mark
    left out, UTF-16 (what PowerShell's ``pip freeze > requirements.txt`` writes) by its mark;
    otherwise UTF-8, undecodable bytes replaced."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def is_local_requirement(line: str) -> bool:
    """Whether a requirements line (pip's syntax) needs the repository's files: ``-r``/``-c``
    another file, a local path (``.``, ``-e .``, ``./libs/x``, ``libs/x``, ``pkg.whl``), a
    ``file:`` URL, or an option naming a local folder (``--find-links ./wheels``)."""
    line = re.sub(r"(^|\s)#.*", "", line).strip()
    if not line:
        return False
    if line.startswith(("-r", "-c", "--requirement", "--constraint", "-e", "--editable")):
        return True
    if "file:" in line:
        return True
    if line.startswith("-"):  # an option: what matters is its argument
        option, _, line = re.sub(r"^(-\w)(?=[^\s=])", r"\1 ", line).partition(" ")
        option, eq, arg = option.partition("=")
        line = (arg if eq else line).strip()
        if not line or "://" in line:
            return False
        if option in ("-f", "--find-links"):  # a folder of packages, wherever it is
            return True
    if "://" in line or " @ " in line:
        return False
    return line.startswith((".", "/", "~")) or "/" in line or bool(_ARCHIVE.fullmatch(line))


@dataclass(frozen=True)
class CondaEnv:
    """What an environment.yml says that matters before conda reads it: the Python it pins
    (``3.10``; ``3`` for any Python 3; ``""`` none, as repo2docker reads ``python=…``), and
    whether its ``pip:`` list names the repository's files (``-r requirements.txt``,
    ``-e .``), so that it is installed after the repository is copied."""

    python: str = ""
    pin: str = ""
    local: bool = False


def conda_environment(path: str, text: str) -> CondaEnv:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _refuse(path, f"not valid YAML, which conda cannot read ({why})") from None
    except (RecursionError, ValueError):
        raise _refuse(path, "not valid YAML, which conda cannot read (nested too deeply)") from None
    if doc is None:
        return CondaEnv()
    if not isinstance(doc, dict):
        raise _refuse(
            path, "must be a YAML mapping (name, channels, dependencies), as conda reads it"
        )
    deps = doc.get("dependencies") or []
    if not isinstance(deps, list):
        raise _refuse(path, "its dependencies must be a list, as conda reads it")
    python = pin = ""
    local = False
    for dep in deps:
        if isinstance(dep, str | int | float) and not python:
            m = _CONDA_PYTHON.match(str(dep).strip())
            if m:
                python, pin = m.group(1), str(dep).strip()
        elif isinstance(dep, dict) and isinstance(dep.get("pip"), list):
            local = local or any(isinstance(x, str) and is_local_requirement(x) for x in dep["pip"])
    return CondaEnv(python, pin, local)


def pipfile_python(text: str | None) -> str:
    """The ``[requires] python_version`` (or ``python_full_version``) of a Pipfile, else
    ``""`` (a Pipfile TOML cannot read: micropipenv's verify step says why)."""
    try:
        requires = tomllib.loads(text or "").get("requires") or {}
    except tomllib.TOMLDecodeError:
        return ""
    if not isinstance(requires, dict):
        return ""
    raw = str(requires.get("python_version") or requires.get("python_full_version") or "")
    m = _PIPFILE_VERSION.match(raw.strip())
    return f"{m.group(1)}.{m.group(2)}" if m else ""
