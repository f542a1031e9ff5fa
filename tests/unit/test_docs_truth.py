"""What README.md and docs/ tell admins is checked against the code, so that a renamed setting,
value, test or file cannot leave the docs behind: every ``c.<Class>.<name>`` is a configurable
trait of that class, every chart value path named in backticks is in values.yaml, every
``make`` target exists, every ``python -m`` module imports, every repository path exists and
every ``file.py::test`` names a test in that file."""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHART = ROOT / "helm" / "aicoe-spawner"


def mentions(pattern: str) -> list[tuple[str, str]]:
    """(doc name, match) for every match of ``pattern`` in the docs."""
    found = []
    for doc in DOCS:
        for m in re.finditer(pattern, doc.read_text()):
            found.append((doc.name, m.group(1)))
    return found


@cache
def configurables() -> dict[str, type]:
    from jupyterhub.app import JupyterHub
    from jupyterhub.services.auth import HubOAuth
    from jupyterhub.spawner import Spawner
    from kubespawner import KubeSpawner

    from aicoe_spawner.builder.config import ImageBuilder
    from aicoe_spawner.spawner import AICoESpawner

    classes = (JupyterHub, HubOAuth, Spawner, KubeSpawner, AICoESpawner, ImageBuilder)
    return {cls.__name__: cls for cls in classes}


TRAITS = sorted(set(mentions(r"\bc\.([A-Z][A-Za-z]+\.[a-z_]+)\b")))


@pytest.mark.parametrize("doc, name", TRAITS)
def test_every_configured_trait_exists(doc, name):
    cls_name, trait = name.split(".")
    assert cls_name in configurables(), f"{doc}: c.{name}: no such configurable class"
    traits = configurables()[cls_name].class_traits(config=True)
    assert trait in traits, f"{doc}: c.{name} is not a configurable trait of {cls_name}"


@cache
def chart_values() -> dict:
    """The chart's values as helm coalesces them: values.yaml, with the builder chart's (its
    dependency, alias ``builder``) below what values.yaml sets under ``builder``."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    builder = yaml.safe_load((CHART / "charts" / "aicoe-image-builder" / "values.yaml").read_text())
    values["builder"] = {**builder, **values["builder"]}
    return values


#: Values whose content is free-form (passed on as they are): any path below them is theirs.
FREE_FORM = ("hub.config", "hub.extraConfig", "hub.services", "hub.loadRoles")
#: Backticked names that look like chart values and are not (with where they come from).
NOT_VALUES = {
    "singleuser.profileList": "zero-to-jupyterhub's value, which the docs compare with",
    "proxy.token": "a key of the chart's Secret",
}


def value_exists(path: str) -> bool:
    if path.startswith(tuple(f"{f}." for f in FREE_FORM)):
        return value_exists(next(f for f in FREE_FORM if path.startswith(f"{f}.")))
    node: object = chart_values()
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _value_mentions() -> list[tuple[str, str]]:
    tops = "|".join(k for k in chart_values() if isinstance(chart_values()[k], dict))
    found = mentions(rf"`((?:{tops})(?:\.[A-Za-z][A-Za-z0-9]*)+)(?:[=:][^`]*)?`")
    # zero-to-jupyterhub.md is about z2jh's chart as much as ours
    return sorted(
        {(d, v) for d, v in found if d != "zero-to-jupyterhub.md" and v not in NOT_VALUES}
    )


@pytest.mark.parametrize("doc, path", _value_mentions())
def test_every_chart_value_named_is_in_values_yaml(doc, path):
    assert value_exists(path), f"{doc}: `{path}` is not a value of the chart (values.yaml)"


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("doc, target", sorted(set(mentions(r"(?m)(?:`|^)make ([a-z][\w-]*)"))))
def test_every_make_target_exists(doc, target):
    assert target in make_targets(), f"{doc}: `make {target}`: no such target in the Makefile"


@pytest.mark.parametrize(
    "doc, module", sorted(set(mentions(r"python3? -m ((?:aicoe_\w+|benchmarks)[\w.]*)")))
)
def test_every_python_module_run_exists(doc, module):
    assert importlib.util.find_spec(module) is not None, f"{doc}: python -m {module}: no module"


PATHS = sorted(
    set(
        mentions(
            r"`((?:tests|docs|aicoe_spawner|aicoe_devcluster|helm|images|scripts|benchmarks|"
            r"examples|tools)/[^`\s*]*)`"
        )
    )
)


@pytest.mark.parametrize("doc, path", PATHS)
def test_every_repository_path_exists(doc, path):
    file, _, test = path.partition("::")
    assert (ROOT / file).exists(), f"{doc}: `{path}`: no such file or folder"
    if test:
        names = {
            n.name
            for n in ast.walk(ast.parse((ROOT / file).read_text()))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert test.split("[")[0] in names, f"{doc}: `{path}`: no such test in {file}"


def test_the_checks_see_the_docs():
    """The patterns find what the docs say (a broken pattern would check nothing)."""
    assert len(TRAITS) > 20 and len(PATHS) > 20 and len(_value_mentions()) > 10
