"""docs/configuration.md is generated from AICoESpawner's traits and kept up to date."""

from __future__ import annotations

import importlib.util
import re

from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_spawner.spawner import AICoESpawner

spec = importlib.util.spec_from_file_location(
    "gen_config_docs", REPO_ROOT / "scripts" / "gen_config_docs.py"
)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_configuration_reference_is_up_to_date():
    """Fails when a trait or its help changed without `python scripts/gen_config_docs.py`."""
    assert gen.OUTPUT.read_text() == gen.render(), (
        "docs/configuration.md is out of date: run python scripts/gen_config_docs.py"
    )


def test_every_trait_is_documented_with_its_help():
    text = gen.render()
    traits = AICoESpawner.class_own_traits(config=True)
    assert traits
    for name, trait in traits.items():
        assert f"\n## {name}\n" in text, name
        assert trait.help, f"{name} has no help string"
        first_words = " ".join(trait.help.split()[:4])
        assert first_words in " ".join(text.split()), name
    assert set(re.findall(r"^## (\w+)$", text, re.M)) == set(traits)


def test_check_mode_reports_drift(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen, "OUTPUT", tmp_path / "configuration.md")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    (tmp_path / "configuration.md").write_text("stale")
    assert gen.main(["--check"]) == 1
