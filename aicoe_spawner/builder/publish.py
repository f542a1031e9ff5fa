"""Who may publish to an ImageStream and tag (pure).

A stream records its publisher (the requester whose build created it, annotation
``aicoe-spawner.io/publisher``) and each tag the content options it was built with
(``aicoe-spawner.io/build-options``). To an existing stream:

- its publisher, a builder admin, and the repository's own webhook (a ``github:`` identity,
  which only a signed delivery carries) may publish anything: ``BuildSpec.publisher_rights``;
- anyone else may publish only the content its publisher would get: the options a tag was
  published with, or for a new tag the repository's own defaults (``.aicoe-ci.yaml`` and the
  service's). Another value of an option that changes the content is refused (409 naming the
  field); the requester chooses another name (``name``), which lives under their own prefix.

Whether the stream is the builder's for the repository at all is :func:`ownership`'s
question (registration); the ref is checked by :func:`..git.resolve_ref`."""

from __future__ import annotations

import json
from typing import Any

from .requests import BuildRequestError, BuildSpec

PUBLISHER_ANNOTATION = "aicoe-spawner.io/publisher"
OPTIONS_ANNOTATION = "aicoe-spawner.io/build-options"
# streams written before the publisher annotation: the ODH creator annotation stood for it
CREATOR_ANNOTATION = "opendatahub.io/notebook-image-creator"
# the options that change what a build produces from a commit, as the request names them
CONTENT_FIELDS = ("strategy", "dockerfile", "context_dir", "base_image")
WEBHOOK_PREFIX = "github:"


def is_webhook(identity: str) -> bool:
    """True for the identity of a verified webhook delivery (see :mod:`.identity`: no hub
    user or service identity starts with ``github:``)."""
    return identity.startswith(WEBHOOK_PREFIX)


def content_options(spec: BuildSpec) -> dict[str, str]:
    """The options of ``spec`` that change its content (empty where the strategy ignores it)."""
    return {f: getattr(spec, f) for f in CONTENT_FIELDS}


def options_text(spec: BuildSpec) -> str:
    """The tag annotation recording :func:`content_options`."""
    return json.dumps(content_options(spec), sort_keys=True)


def publisher_of(stream: dict) -> str | None:
    ann = (stream.get("metadata") or {}).get("annotations") or {}
    return ann.get(PUBLISHER_ANNOTATION) or ann.get(CREATOR_ANNOTATION)


def tag_options(stream: dict, tag: str) -> dict[str, str] | None:
    """The content options spec tag ``tag`` of ``stream`` was published with (None: no such
    tag, or written before they were recorded)."""
    for entry in (stream.get("spec") or {}).get("tags") or []:
        if isinstance(entry, dict) and entry.get("name") == tag:
            text = (entry.get("annotations") or {}).get(OPTIONS_ANNOTATION)
            try:
                value = json.loads(text) if isinstance(text, str) else None
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _shown(value: Any) -> str:
    return repr(value) if value else "(none)"


def refusal(
    stream: dict | None, spec: BuildSpec, reference: dict[str, str] | None = None
) -> BuildRequestError | None:
    """Why the requester of ``spec`` may not publish it to ``stream`` (None: they may).

    ``reference``: the options the repository's defaults give (for tags the stream does not
    record options of); None checks only the tags that record them (the re-check on write)."""
    if stream is None or spec.publisher_rights:
        return None
    publisher = publisher_of(stream)
    if publisher == spec.requester:
        return None
    wanted = content_options(spec)
    for tag in (spec.tag, *spec.extra_tags):
        recorded = tag_options(stream, tag)
        base = recorded if recorded is not None else reference
        if base is None:
            continue
        for f in CONTENT_FIELDS:
            if wanted[f] != base.get(f, ""):
                where = (
                    f"tag {tag!r} was published with {_shown(base.get(f))}"
                    if recorded is not None
                    else f"the repository's default is {_shown(base.get(f))}"
                )
                return BuildRequestError(
                    f,
                    f"{_shown(wanted[f])} differs from what {publisher or 'its publisher'} "
                    f"published to {spec.namespace}/{spec.stream} ({where}); only the "
                    "publisher may change it; choose another name",
                    409,
                )
    return None


def owned_streams(streams: list[dict], requester: str) -> int:
    """How many of ``streams`` ``requester`` published."""
    return sum(1 for s in streams if publisher_of(s) == requester)
