"""The ``aicoe-image-builder`` command, the part of
:class:`~aicoe_spawner.builder.config.ImageBuilder` that is not a setting: its name, help,
short options and flags (:data:`DESCRIPTION`, :data:`EXAMPLES`, :data:`ALIASES`,
:data:`FLAGS`), how its configuration is loaded (command line > config file > environment >
default; the environment through ``config_env.ENV_VARS``) and how it starts. ``ImageBuilder``
binds the functions below as its methods (``app`` is the ImageBuilder)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from traitlets import List, TraitError
from traitlets.config import Application, Config, catch_config_error

from .config_env import ENV_VARS, parse_env_value
from .settings import Settings

if TYPE_CHECKING:
    from .config import ImageBuilder

DEFAULT_CONFIG_FILE = "aicoe_image_builder_config.py"

NAME = "aicoe-image-builder"
DESCRIPTION = (
    "The aicoe-spawner image builder: builds notebook images from Git repositories and "
    "publishes them as ImageStream tags. Configured by a config file "
    f"({DEFAULT_CONFIG_FILE}), these options, and AICOE_BUILDER_* environment variables "
    "(command line > config file > environment > default; docs/builder-config.md)."
)
EXAMPLES = """
    aicoe-image-builder --config=/etc/aicoe/aicoe_image_builder_config.py
    aicoe-image-builder --namespace=jupyterhub --max-total=20 --log-level=DEBUG
    aicoe-image-builder --generate-config > aicoe_image_builder_config.py
    """

ALIASES = {
    "config": "ImageBuilder.config_file",
    "namespace": "ImageBuilder.namespace",
    "registry": "ImageBuilder.registry",
    "backend": "ImageBuilder.backend",
    "build-namespace": "ImageBuilder.build_namespace",
    "max-per-user": "ImageBuilder.max_per_user",
    "max-total": "ImageBuilder.max_total",
    "build-timeout": "ImageBuilder.build_timeout",
    "kubeconfig": "ImageBuilder.kubeconfig",
    "bind-ip": "ImageBuilder.bind_ip",
    "log-level": "Application.log_level",
}
FLAGS = {
    **Application.flags,
    "generate-config": (
        {"ImageBuilder": {"generate_config": True}},
        "Print a config file with every setting and its help, commented out.",
    ),
    "no-import": (
        {"ImageBuilder": {"import_enabled": False}},
        "Do not import images (ImageBuilder.import_enabled = False).",
    ),
}


def env_config(app: ImageBuilder, env: Mapping[str, str]) -> Config:
    """The configuration ``env`` gives (:data:`ENV_VARS`), each value validated by its
    trait; SystemExit naming the variable and the trait on a bad value."""
    config = Config()
    section = config.ImageBuilder
    for var in ENV_VARS:
        raw = env.get(var.name)
        trait = app.traits()[var.trait]
        if raw is None or var.trait in section:
            continue
        if raw == "" and not isinstance(trait, List):
            continue  # empty: the default (an empty list is a value: no hosts)
        try:
            value = parse_env_value(var, trait, raw)
            section[var.trait] = trait._validate(app, value)
        except (TraitError, ValueError) as e:
            shown = raw if len(raw) <= 80 else raw[:77] + "..."
            raise SystemExit(f"{var.name}={shown!r} (ImageBuilder.{var.trait}): {e}") from None
    return config


@catch_config_error
def initialize(app: ImageBuilder, argv: list[str] | None = None) -> None:
    """Command line, then environment, then the config file (command line wins)."""
    app.parse_command_line(argv)
    if app.generate_config:
        return
    app.update_config(app.env_config(os.environ))
    if app.config_file != DEFAULT_CONFIG_FILE and not os.path.isfile(app.config_file):
        raise SystemExit(f"config file {app.config_file!r} not found")
    app.load_config_file(app.config_file)


def settings(app: ImageBuilder) -> Settings:
    """What the rest of the builder receives."""
    return Settings.of(app)


def start(app: ImageBuilder) -> None:
    if app.generate_config:
        print(app.generate_config_file())
        return
    if app.show_config or app.show_config_json:
        Application.start(app)
        return
    if app.serve is None:
        raise RuntimeError("ImageBuilder.serve is not set (see aicoe_spawner.builder)")
    asyncio.run(app.serve(app))
