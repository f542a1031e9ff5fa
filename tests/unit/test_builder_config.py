"""The builder's configuration (aicoe_spawner/builder/config.py): the environment table,
precedence (command line > config file > environment > default), values checked at start."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode

from aicoe_devcluster.controlplane import REPO_ROOT, this_checkout_env
from aicoe_spawner.builder.config import (
    DEFAULT_CONFIG_FILE,
    ENV_VARS,
    ImageBuilder,
    Settings,
    env_vars_of,
    settings_from_env,
)

TRAITS = ImageBuilder.class_own_traits(config=True)
NOT_FROM_ENV = {"config_file", "generate_config"}  # command line / config file only


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No builder variable from the caller's environment, and a working directory without a
    config file."""
    for var in ENV_VARS:
        monkeypatch.delenv(var.name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def app_from(argv: list[str]) -> ImageBuilder:
    app = ImageBuilder()
    app.initialize(argv)
    return app


# -- the table ---------------------------------------------------------------------------


def test_every_variable_sets_a_configurable_trait_and_every_setting_has_one():
    names = [v.name for v in ENV_VARS]
    assert len(names) == len(set(names)), "a variable listed twice"
    for var in ENV_VARS:
        assert var.trait in TRAITS, f"{var.name} -> {var.trait}: no such setting"
    assert {v.trait for v in ENV_VARS} == set(TRAITS) - NOT_FROM_ENV
    assert env_vars_of("kubeconfig") == ["AICOE_BUILDER_KUBECONFIG", "KUBECONFIG"]


def test_every_variable_the_project_sets_is_in_the_table():
    """What the chart, the example config, the demo and the docs name is read, not ignored."""
    known = {v.name for v in ENV_VARS}
    places = [
        *(REPO_ROOT / "helm" / "aicoe-spawner").rglob("templates/*.yaml"),  # + the builder chart
        REPO_ROOT / "jupyterhub_config.py",
        REPO_ROOT / "aicoe_devcluster" / "demo.py",
        REPO_ROOT / "docs" / "builder.md",
    ]
    named = set()
    for path in places:
        named |= set(re.findall(r"AICOE_BUILDER_[A-Z][A-Z_]*[A-Z]", path.read_text()))
    assert named, "no variable found: the pattern or the places are wrong"
    assert named - known == set()


def sample(name: str, trait) -> tuple[str, object]:
    """A valid text for the trait's variable, different from its default, and its value."""
    special = {
        "build_image": ("registry.local:5000/buildah:1", "registry.local:5000/buildah:1"),
        "base_image": ("registry.local:5000/nb:1", "registry.local:5000/nb:1"),
        "build_storage": ("5Gi", "5Gi"),
        "build_node_image_store": ("/var/lib/aicoe-builder/images",) * 2,
        "backend": ("openshift", "openshift"),
        "python_base_images": (
            "3.10=nb:py310, 3.9=nb:py39",
            {"3.10": "nb:py310", "3.9": "nb:py39"},
        ),
        "image_policy": (
            '{"default_policy": {"images": ["a"]}}',
            {"default_policy": {"images": ["a"]}},
        ),
        "github_api_url": ("https://ghe.example.com/api/v3/", "https://ghe.example.com/api/v3"),
        "public_url": ("https://jupyter.example.com", "https://jupyter.example.com"),
        "build_node_selector": ('{"node-role/builds": "true"}', {"node-role/builds": "true"}),
        "build_tolerations": (
            '[{"key": "builds", "operator": "Exists"}]',
            [{"key": "builds", "operator": "Exists"}],
        ),
        "destinations": (
            '[{"repositories": ["github.com/o/*"], "registry": "quay.io/o"}]',
            [{"repositories": ["github.com/o/*"], "registry": "quay.io/o"}],
        ),
        "apt_sources": (
            "deb http://a x main;deb http://b y main",
            ["deb http://a x main", "deb http://b y main"],
        ),
    }
    if name in special:
        return special[name]
    if isinstance(trait, Bool):
        return ("false", False) if trait.default() else ("true", True)
    if isinstance(trait, Integer):
        return "7", 7
    if isinstance(trait, Float):
        return "7.5", 7.5
    if isinstance(trait, List):
        return " a, b,,c ", ["a", "b", "c"]
    assert isinstance(trait, Unicode | Enum | Dict), (name, trait)
    return f"value-of-{name}", f"value-of-{name}"


@pytest.mark.parametrize("var", ENV_VARS, ids=lambda v: v.name)
def test_each_variable_reaches_its_trait(var, clean_env):
    text, value = sample(var.trait, TRAITS[var.trait])
    assert value != TRAITS[var.trait].default()
    clean_env.setenv(var.name, text)
    assert getattr(app_from([]), var.trait) == value


def test_the_values_reach_the_settings_the_builder_receives(clean_env):
    env = {
        "AICOE_BUILDER_IMAGE": "registry.local/buildah:2",
        "AICOE_BUILDER_TIMEOUT": "120",
        "AICOE_BUILDER_INTERVAL": "0.25",
        "AICOE_BUILDER_ALLOWED_HOSTS": "",  # empty list: no public host at all
        "AICOE_BUILDER_PUSH_SECRET": "",  # empty: the default (none)
        "AICOE_BUILDER_PYTHON_BASE_IMAGES": "3.12=nb:312",
        "AICOE_BUILDER_IMAGE_POLICY": '{"group_policies": {"g": {"images": ["x"]}}}',
        "KUBECONFIG": "/k/other",
        "AICOE_BUILDER_KUBECONFIG": "/k/mine",
    }
    s = settings_from_env(env)
    assert (s.builder_image, s.timeout, s.interval) == ("registry.local/buildah:2", 120, 0.25)
    assert (s.allowed_hosts, s.push_secret, s.kubeconfig) == ((), None, "/k/mine")
    assert s.python_base_images == (("3.12", "nb:312"),)
    assert s.image_policies().group_policies == {"g": {"images": ["x"]}}
    assert settings_from_env({"KUBECONFIG": "/k/other"}).kubeconfig == "/k/other"


def test_the_defaults_are_the_settings_defaults(clean_env):
    """One place for each default: the traits take theirs from Settings."""
    assert app_from([]).settings() == Settings()


# -- precedence --------------------------------------------------------------------------


def test_command_line_over_config_file_over_environment_over_default(clean_env, tmp_path):
    (tmp_path / DEFAULT_CONFIG_FILE).write_text(
        "c.ImageBuilder.max_total = 20\nc.ImageBuilder.max_per_user = 4\n"
    )
    clean_env.setenv("AICOE_BUILDER_MAX_TOTAL", "5")
    clean_env.setenv("AICOE_BUILDER_MAX_PER_USER", "3")
    clean_env.setenv("AICOE_BUILDER_BRANCH_TTL", "9")
    app = app_from(["--max-total=30"])
    assert (app.max_total, app.max_per_user, app.branch_ttl, app.job_retention) == (30, 4, 9, 600)
    app = app_from(["--ImageBuilder.branch_ttl=11"])
    assert (app.max_total, app.branch_ttl) == (20, 11)


def test_a_named_config_file_is_loaded_and_must_exist(clean_env, tmp_path):
    conf = tmp_path / "etc" / "builder.py"
    conf.parent.mkdir()
    conf.write_text("c.ImageBuilder.backend = 'auto'\nc.ImageBuilder.allowed_hosts = []\n")
    app = app_from([f"--config={conf}"])
    assert (app.backend, app.allowed_hosts) == ("auto", [])
    with pytest.raises(SystemExit, match="not found"):
        app_from([f"--config={tmp_path / 'missing.py'}"])


# -- bad values stop the builder ---------------------------------------------------------

BAD = [
    ("AICOE_BUILDER_MAX_TOTAL", "abc", "max_total", "expected an int"),
    ("AICOE_BUILDER_TIMEOUT", "-5", "build_timeout", "less than 1"),
    ("AICOE_BUILDER_MAX_PER_USER", "0", "max_per_user", "less than 1"),
    ("AICOE_BUILDER_JOB_RETENTION", "-1", "job_retention", "less than 0"),
    ("AICOE_BUILDER_INTERVAL", "0", "reconcile_interval", "positive number of seconds"),
    ("AICOE_BUILDER_IMPORT_POLL", "nan", "import_poll", "positive number of seconds"),
    ("AICOE_BUILDER_CLEANUP_INTERVAL", "soon", "cleanup_interval", "positive number"),
    ("AICOE_BUILDER_ALLOW_HTTP", "yes", "allow_http", "boolean"),
    ("AICOE_BUILDER_BACKEND", "k8s", "backend", "kubernetes"),
    ("AICOE_BUILDER_BUILD_STORAGE", "lots", "build_storage", "build_storage"),
    ("AICOE_BUILDER_IMAGE", "Not An Image", "build_image", "not a valid image"),
    ("AICOE_BUILDER_PYTHON_BASE_IMAGES", "3.12", "python_base_images", "<major.minor>=<image>"),
    ("AICOE_BUILDER_PYTHON_BASE_IMAGES", "python-3=nb", "python_base_images", "<major.minor>"),
    ("AICOE_BUILDER_IMAGE_POLICY", "[1]", "image_policy", "JSON object"),
    ("AICOE_BUILDER_IMAGE_POLICY", '{"images": []}', "image_policy", "unknown key"),
    ("AICOE_BUILDER_DESTINATIONS", '{"registry": "q.io"}', "destinations", "JSON array"),
    (
        "AICOE_BUILDER_DESTINATIONS",
        '[{"repositories": ["github.com/o/*"], "registry": "q.io/o", "allow": ["x"]}]',
        "destinations",
        "entry 0.allow: unknown key 'x'",
    ),
]


@pytest.mark.parametrize(("var", "text", "trait", "why"), BAD, ids=lambda x: str(x)[:30])
def test_a_bad_variable_stops_startup_naming_it(var, text, trait, why, clean_env):
    clean_env.setenv(var, text)
    with pytest.raises(SystemExit) as stopped:
        app_from([])
    message = str(stopped.value)
    assert message.startswith(f"{var}=")
    assert f"(ImageBuilder.{trait})" in message
    assert why in message


def run_builder(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    """``python -m aicoe_spawner.builder`` of this checkout, with no builder variable but
    ``env``."""
    ours = {var.name for var in ENV_VARS}
    base = {k: v for k, v in this_checkout_env(dict(os.environ)).items() if k not in ours}
    return subprocess.run(
        [sys.executable, "-m", "aicoe_spawner.builder", *args],
        cwd=cwd,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_command_line_and_config_file_values_stop_the_process(tmp_path):
    cli = run_builder("--build-timeout=-1", cwd=tmp_path)
    assert cli.returncode == 1
    assert "build_timeout" in cli.stderr and "less than 1" in cli.stderr
    (tmp_path / DEFAULT_CONFIG_FILE).write_text("c.ImageBuilder.max_total = 'many'\n")
    conf = run_builder(cwd=tmp_path)
    assert conf.returncode == 1
    assert "max_total" in conf.stderr and "'many'" in conf.stderr
    env = run_builder(cwd=tmp_path, env={"AICOE_BUILDER_MAX_TOTAL": "abc"})
    assert env.returncode == 1
    assert "AICOE_BUILDER_MAX_TOTAL='abc' (ImageBuilder.max_total): expected an int" in env.stderr


# -- the command -------------------------------------------------------------------------


def test_help_all_lists_every_setting_with_its_help(tmp_path):
    done = run_builder("--help-all", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name, trait in TRAITS.items():
        assert f"--ImageBuilder.{name}=" in done.stdout, name
        assert " ".join(trait.help.split()[:3]) in " ".join(done.stdout.split()), name
    assert "--max-total=" in done.stdout and "--config=" in done.stdout


def test_generate_config_prints_every_setting_commented_out(tmp_path):
    done = run_builder("--generate-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in TRAITS:
        assert f"# c.ImageBuilder.{name} = " in done.stdout, name
    (tmp_path / DEFAULT_CONFIG_FILE).write_text(done.stdout)
    shown = run_builder("--show-config", cwd=tmp_path)  # the generated file loads
    assert shown.returncode == 0, shown.stderr
