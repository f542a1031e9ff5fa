"""Build requests: strict validation of user input and deterministic naming (pure).

Every check raises :class:`BuildRequestError` naming the field, so the service can answer a
clear 400 before anything is created. Host resolution is injected (``resolve``) so the SSRF
checks are testable without DNS.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .ci_config import CIConfig
from .destinations import decide as decide_destination
from .env_dockerfile import environment_dockerfile
from .environment import EnvSettings, RepoView, decide
from .fields import (
    BuildRequestError,
    validate_image,
    validate_relative_path,
    validate_strategy,
)
from .naming import (
    dns_label,
    hashed_stream_name,
    project_stream_name,
    requester_stream_name,
    stream_name_for,
    tag_for,
)
from .repo_url import (
    RepoPolicy,
    Resolver,
    system_resolver,
    validate_ref,
    validate_repo_url,
)

#: The builder's default base image: Jupyter Docker Stacks' minimal notebook (it has
#: jupyterhub-singleuser and conda), pinned; admins change it (AICOE_BUILDER_BASE_IMAGE).
DEFAULT_BASE_IMAGE = "quay.io/jupyter/minimal-notebook:2025-10-06"
#: Thoth's s2i images ask the retired Thoth service for advice unless told not to; AICoE-CI
#: ran them with these variables, so the lock installs as it is.
THOTH_IMAGE_PREFIX = "quay.io/thoth-station/s2i-thoth-"
THOTH_ENV = (("THOTH_ADVISE", "0"), ("THOTH_DRY_RUN", "1"), ("THOTH_ERROR_FALLBACK", "1"))
REQUEST_KEYS = frozenset(
    {
        "repo",
        "ref",
        "name",
        "strategy",
        "dockerfile",
        "context_dir",
        "base_image",
        "display_name",
        "description",
    }
)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def validate_text(value: Any, f: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BuildRequestError(f, "must be a string")
    if len(value) > limit:
        raise BuildRequestError(f, f"longer than {limit} characters")
    if not all(c.isprintable() or c == "\n" for c in value):
        raise BuildRequestError(f, "must not contain control characters")
    return value.strip()


def validate_stream_name(value: Any, f: str = "name") -> str:
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise BuildRequestError(
            f, "must be a DNS-1123 label: lowercase letters, digits and '-', at most 63"
        )
    return value


@dataclass(frozen=True)
class BuildRequest:
    """A validated request; options left None are taken from .aicoe-ci.yaml or defaults."""

    repo: str
    ref: str
    name: str | None = None
    strategy: str | None = None
    dockerfile: str | None = None
    context_dir: str | None = None
    base_image: str | None = None
    display_name: str = ""
    description: str = ""


def parse_build_request(
    body: Any, policy: RepoPolicy, resolve: Resolver = system_resolver
) -> BuildRequest:
    """The JSON body of ``POST api/builds`` -> :class:`BuildRequest` (or BuildRequestError)."""
    if not isinstance(body, dict):
        raise BuildRequestError("body", "must be a JSON object")
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise BuildRequestError(
            unknown[0], f"unknown field (allowed: {', '.join(sorted(REQUEST_KEYS))})"
        )
    repo = validate_repo_url(body.get("repo"), policy, resolve)
    ref = validate_ref(body.get("ref"))
    g = body.get
    return BuildRequest(
        repo=repo,
        ref=ref,
        name=validate_stream_name(g("name")) if g("name") is not None else None,
        strategy=validate_strategy(g("strategy")) if g("strategy") is not None else None,
        dockerfile=(
            validate_relative_path(g("dockerfile"), "dockerfile", allow_empty=False)
            if g("dockerfile") is not None
            else None
        ),
        context_dir=(
            validate_relative_path(g("context_dir"), "context_dir")
            if g("context_dir") is not None
            else None
        ),
        base_image=validate_image(g("base_image"), "base_image")
        if g("base_image") is not None
        else None,
        display_name=validate_text(g("display_name"), "display_name", 100),
        description=validate_text(g("description"), "description", 1000),
    )


# -- the resolved build --------------------------------------------------------------------


@dataclass(frozen=True)
class BuildDefaults:
    """The builder's configuration of builds. ``strategy`` empty: detected from the
    repository's files (:mod:`.environment`). ``python_base_images``: (version, image) pairs
    runtime.txt / .python-version choose from. ``package_index_url`` / ``trusted_host`` /
    ``apt_sources``: where environment builds install from. ``notebook_user`` (uid:gid) and
    ``notebook_home``: who owns the repository's files and where they go. ``layer_cache``:
    environment builds keep their layers in ``<registry>/<org>/<stream>-cache``."""

    namespace: str = "default"
    registry: str = "image-registry.local:5000"
    registry_org: str = ""  # default: the namespace
    strategy: str = ""
    dockerfile: str = "Dockerfile"
    base_image: str = DEFAULT_BASE_IMAGE
    python_base_images: tuple[tuple[str, str], ...] = ()
    package_index_url: str = ""
    trusted_host: str = ""
    apt_sources: tuple[str, ...] = ()
    notebook_user: str = "1000:100"
    notebook_home: str = "/home/jovyan"
    layer_cache: bool = False
    # per-project destinations (:mod:`.destinations`), first match wins
    destinations: tuple[Any, ...] = ()

    def env_settings(self, base_image: str):
        """The :class:`~.environment.EnvSettings` of a build on ``base_image``."""
        return EnvSettings(
            base_image=base_image,
            python_base_images=dict(self.python_base_images),
            package_index_url=self.package_index_url,
            trusted_host=self.trusted_host,
            apt_sources=self.apt_sources,
            user=self.notebook_user,
            home=self.notebook_home,
        )


@dataclass(frozen=True)
class BuildSpec:
    """Everything a backend needs; ``id`` is a function of repo, commit and options."""

    id: str
    repo: str
    ref: str
    commit: str
    ref_kind: str  # tag | branch | commit
    namespace: str
    stream: str
    tag: str
    strategy: str
    dockerfile: str
    context_dir: str
    base_image: str
    output_image: str
    display_name: str
    description: str
    requester: str
    notes: tuple[str, ...] = field(default=())
    # tags registered at the same digest as ``tag`` (.aicoe-ci.yaml custom-tag)
    extra_tags: tuple[str, ...] = field(default=())
    # what chose ``stream``: "name", ".aicoe-ci.yaml build.registry-project" or "repo"
    name_field: str = "repo"
    overlay: str = ""  # the .aicoe-ci.yaml overlay this image is built for
    # ``id`` is per requester; identical builds of different requesters share ``content_id``
    # and run as one Job (named after ``job_id``, the build that started it)
    content_id: str = ""
    job_id: str = ""
    # the requester may publish to the stream whoever published it (a builder admin, the
    # repository's own webhook): see :mod:`.publish`
    publisher_rights: bool = False
    # the files that decided the strategy (detection), and an environment build's Dockerfile
    decided_by: tuple[str, ...] = field(default=())
    generated_dockerfile: str = ""
    # build-time variables of the source strategy (Thoth's s2i images)
    build_env: tuple[tuple[str, str], ...] = field(default=())
    layer_cache: str = ""  # the repository --cache-from/--cache-to use ("" = no layer cache)
    # the destination's Secrets (:mod:`.destinations`): None = the builder's push Secret,
    # "" = push without credentials
    push_secret: str | None = None
    pull_secret: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_id", self.content_id or self.id)
        object.__setattr__(self, "job_id", self.job_id or self.id)

    @property
    def image(self) -> str:
        return f"{self.namespace}/{self.stream}:{self.tag}"

    @property
    def mapped_destination(self) -> bool:
        """Whether the repository has a destination of its own (:mod:`.destinations`)."""
        return self.push_secret is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildSpec:
        data = json.loads(text)
        data["notes"] = tuple(data.get("notes", ()))
        data["extra_tags"] = tuple(data.get("extra_tags", ()))
        data["decided_by"] = tuple(data.get("decided_by", ()))
        data["build_env"] = tuple(tuple(kv) for kv in data.get("build_env", ()))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def build_id(repo: str, commit: str, options: dict[str, Any]) -> str:
    canonical = json.dumps({"repo": repo, "commit": commit, **options}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _subtree(view: RepoView, folder: str) -> RepoView:
    """``view`` seen from ``folder`` (the build context)."""
    if not folder:
        return view
    prefix = folder + "/"
    return RepoView(
        tuple(p[len(prefix) :] for p in view.paths if p.startswith(prefix)),
        {k[len(prefix) :]: v for k, v in view.files.items() if k.startswith(prefix)},
    )


def needs_view(request: BuildRequest, ci: Any) -> bool:
    """Whether :func:`resolve_spec` reads the repository's files (detection, or an
    environment build) for ``request`` under ``ci``."""
    strategy = request.strategy or ci.build_strategy
    if strategy is None:
        return not (request.dockerfile or ci.dockerfile_path or ci.containerfile)
    return strategy == "environment" or (
        strategy == "source" and not (request.base_image or ci.base_image)
    )


def resolve_spec(
    request: BuildRequest,
    commit: str,
    ref_kind: str,
    ci: Any,
    defaults: BuildDefaults,
    requester: str,
    *,
    hashed_name: bool = False,
    view: RepoView | None = None,
) -> BuildSpec:
    """Request options, else the repo's .aicoe-ci.yaml (``ci``, a CIConfig or None), else
    detection from the repository's files (``view``, as the overlay's build sees them; see
    :mod:`.environment`), else the service defaults -> the :class:`BuildSpec`. Where the
    image is pushed is the service's configuration alone (:mod:`.destinations`: a mapped
    repository's keys choose within its entry; BuildRequestError 403 otherwise).
    ``hashed_name``: the default stream name is taken by another repo. BuildRequestError
    (422) for a file a build cannot honour. A chosen name lives under a prefix
    (:func:`requester_stream_name`, :func:`project_stream_name`)."""
    ci = ci or CIConfig()
    notes: list[str] = list(ci.notes)
    named = request.strategy or ci.build_strategy
    explicit_base = request.base_image or ci.base_image
    if named == "source" and not explicit_base:
        # the builder's default base image is a notebook image, not an s2i builder image
        named = "environment"
        notes.append(
            "strategy source without a base image: an environment build on the builder's "
            "default notebook image"
        )
    if named is None and (request.dockerfile or ci.dockerfile_path or ci.containerfile):
        named = "dockerfile"
    context_dir = request.context_dir if request.context_dir is not None else ci.context_dir
    base_image = explicit_base or defaults.base_image
    decision = None
    if view is not None and named in (None, "environment"):
        settings = defaults.env_settings(base_image)
        sub = _subtree(view, context_dir)
        decision = decide(sub.paths, sub.files, settings, strategy=named, base_image=explicit_base)
        notes.extend(decision.notes)
        if decision.kind == "content-only":
            notes.append(
                "detected: no Dockerfile and no environment files: the repository's content "
                "on the notebook image"
            )
        elif named is None:
            what = "Dockerfile build" if decision.kind == "dockerfile" else "environment build"
            notes.append(f"detected: {what} from {', '.join(decision.decided_by)}")
        named = decision.strategy
        base_image = decision.base_image or base_image
    strategy = named or defaults.strategy or "dockerfile"
    default_file = "Containerfile" if ci.containerfile else defaults.dockerfile
    if decision is not None and decision.dockerfile:
        default_file = decision.dockerfile
    dockerfile = request.dockerfile or ci.dockerfile_path or default_file
    if request.name:
        stream, name_field = request.name, "name"
    elif ci.registry_project:
        stream, name_field = dns_label(ci.registry_project), ci.project_field
    else:
        stream, name_field = stream_name_for(request.repo), "repo"
        if hashed_name:
            stream = hashed_stream_name(request.repo)
    if ci.overlay and "overlays[" not in name_field:
        # a name shared by all overlays: one stream per overlay
        stream = dns_label(f"{stream[:42]}-{ci.overlay}")
    if name_field == "name":
        stream = requester_stream_name(requester, stream)
    elif name_field != "repo":
        stream = project_stream_name(request.repo, stream, hashed=hashed_name)
    tag = tag_for(request.ref, commit)
    extra_tags = (ci.custom_tag,) if ci.custom_tag and ci.custom_tag != tag else ()
    org = defaults.registry_org or defaults.namespace
    target = decide_destination(
        request.repo, ci, defaults.destinations, f"{defaults.registry}/{dns_label(org)}"
    )
    if target.mapped:
        notes.append(f"destination {target.path} (the builder's mapping for this repository)")
    # a registry-project names the image in a mapped destination; a requester's name never
    # does (their image must not take the project's repository and tag)
    image_name = target.name if target.name and name_field != "name" else stream
    output_image = f"{target.path}/{image_name}:{tag}"
    generated = ""
    if strategy == "environment":
        if decision is None:  # no view: the repository's content only
            decision = decide((), {}, defaults.env_settings(base_image), strategy="environment")
        labels = {
            "io.openshift.build.source-location": request.repo,
            "io.openshift.build.commit.id": commit,
            "io.openshift.build.commit.ref": request.ref,
        }
        sub = _subtree(view, context_dir) if view is not None else RepoView(())
        generated = environment_dockerfile(
            decision, base_image, defaults.env_settings(base_image), sub.files, labels
        )
    build_env = (
        THOTH_ENV if strategy == "source" and base_image.startswith(THOTH_IMAGE_PREFIX) else ()
    )
    if build_env:
        notes.append("Thoth base image: built with " + " ".join(f"{k}={v}" for k, v in build_env))
    options = {
        "strategy": strategy,
        "dockerfile": dockerfile if strategy == "dockerfile" else "",
        "context_dir": context_dir,
        "base_image": base_image if strategy in ("source", "environment") else "",
        "output_image": output_image,
        "namespace": defaults.namespace,
        "extra_tags": list(extra_tags),
    }
    if strategy == "environment":
        options["generated"] = hashlib.sha256(generated.encode()).hexdigest()
    if build_env:
        options["build_env"] = list(build_env)
    cache = ""
    if defaults.layer_cache and strategy == "environment":
        cache = f"{target.path}/{image_name[:57]}-cache"
    # one record per requester: another user's request never returns (or replaces) it
    record_id = build_id(request.repo, commit, {**options, "requester": requester})
    return BuildSpec(
        id=record_id,
        content_id=build_id(request.repo, commit, options),
        repo=request.repo,
        ref=request.ref,
        commit=commit,
        ref_kind=ref_kind,
        namespace=defaults.namespace,
        stream=stream,
        tag=tag,
        strategy=strategy,
        dockerfile=options["dockerfile"],
        context_dir=context_dir,
        base_image=options["base_image"],
        output_image=output_image,
        display_name=request.display_name,
        description=request.description,
        requester=requester,
        notes=tuple(notes),
        extra_tags=extra_tags,
        name_field=name_field,
        overlay=ci.overlay,
        decided_by=decision.decided_by if decision is not None else (),
        generated_dockerfile=generated,
        build_env=build_env,
        layer_cache=cache,
        push_secret=target.push_secret,
        pull_secret=target.pull_secret,
    )


def with_requester(spec: BuildSpec, requester: str) -> BuildSpec:
    return replace(spec, requester=requester)
