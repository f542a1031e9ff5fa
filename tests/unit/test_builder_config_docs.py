"""docs/builder-config.md is generated from ImageBuilder's traits (by the generator of
docs/configuration.md) and kept up to date."""

from __future__ import annotations

import importlib.util
import re

from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_spawner.builder.config import ENV_VARS, ImageBuilder

spec = importlib.util.spec_from_file_location(
    "gen_config_docs", REPO_ROOT / "scripts" / "gen_config_docs.py"
)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_builder_configuration_reference_is_up_to_date():
    """Fails when a trait, its help or the environment table changed without
    `python scripts/gen_config_docs.py`."""
    assert gen.BUILDER_OUTPUT.read_text() == gen.render_builder(), (
        "docs/builder-config.md is out of date: run python scripts/gen_config_docs.py"
    )


def test_every_setting_is_documented_with_its_help_and_its_variables():
    text = gen.render_builder()
    flat = " ".join(text.split())
    traits = ImageBuilder.class_own_traits(config=True)
    for name, trait in traits.items():
        assert f"\n## {name}\n" in text, name
        assert f"`c.ImageBuilder.{name}`" in text, name
        assert trait.help, f"{name} has no help string"
        assert " ".join(trait.help.split()[:4]) in flat, name
    assert set(re.findall(r"^## (\w+)$", text, re.M)) == set(traits)
    for var in ENV_VARS:
        section = text.split(f"\n## {var.trait}\n", 1)[1].split("\n## ", 1)[0]
        assert f"`{var.name}`" in section, (var.name, var.trait)


def test_builder_page_is_linked_from_builder_md():
    assert "(builder-config.md)" in (REPO_ROOT / "docs" / "builder.md").read_text()
