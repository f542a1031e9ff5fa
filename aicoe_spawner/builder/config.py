"""The builder's configuration: the ``ImageBuilder`` traitlets Application.

Every setting is a trait of :class:`ImageBuilder` (``c.ImageBuilder.<name>`` in
``aicoe_image_builder_config.py``, ``--ImageBuilder.<name>=…`` on the command line). The
environment variables JupyterHub and the Helm chart set (``AICOE_BUILDER_*``, the
``JUPYTERHUB_*`` the builder reads) map onto the traits in ``config_env.ENV_VARS``, parsed and
validated like any other value. Precedence: command line > config file > environment >
default (:mod:`.config_loading`; what a type alone does not check: :mod:`.config_checks`).
docs/builder-config.md is generated from these traits (scripts/gen_config_docs.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from traitlets import Bool, Dict, Enum, Integer, List, Unicode, default, validate
from traitlets import Callable as CallableTrait
from traitlets.config import Application

from . import config_loading
from .config_checks import CHECKS, Seconds
from .config_env import ENV_VARS, EnvVar, env_vars_of
from .config_loading import ALIASES, DEFAULT_CONFIG_FILE, DESCRIPTION, EXAMPLES, FLAGS, NAME
from .settings import DEFAULT_PYTHON_BASE_IMAGES, Settings

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_PYTHON_BASE_IMAGES",
    "ENV_VARS",
    "EnvVar",
    "ImageBuilder",
    "Seconds",
    "Settings",
    "env_vars_of",
]

_S = Settings  # the defaults


class ImageBuilder(Application):
    """``aicoe-image-builder``: the image builder service of aicoe-spawner."""

    name = NAME
    description = DESCRIPTION
    examples = EXAMPLES
    raise_config_file_errors = True  # a broken config file stops the builder
    aliases = ALIASES
    flags = FLAGS

    #: the coroutine that runs the builder with this configuration (__main__.serve)
    serve = CallableTrait(allow_none=True, default_value=None)

    config_file = Unicode(
        DEFAULT_CONFIG_FILE,
        help="""Python (or .json) config file to load, relative to the working directory.
        The default name is loaded when it exists; a file named here must exist.""",
    ).tag(config=True)

    generate_config = Bool(
        False, help="Print a commented config file with every setting, then exit."
    ).tag(config=True)

    @default("log_level")
    def _log_level_default(self) -> int:
        return 20  # INFO

    # -- where builds and images live ---------------------------------------------------

    namespace = Unicode(
        _S.namespace,
        help="""Namespace of the build records (ImageBuild objects), the quota ledger and the
        ImageStreams of built images. The chart sets it to the release's namespace.""",
    ).tag(config=True)

    build_namespace = Unicode(
        "",
        help="""Namespace build Jobs run in (Kubernetes backend), e.g. `notebook-builds`,
        confined by the chart's NetworkPolicy; records and ImageStreams stay in `namespace`.
        Empty: `namespace`.""",
    ).tag(config=True)

    registry = Unicode(
        _S.registry,
        help="""Registry host[:port][/organisation] built images are pushed to. Only this
        setting decides it, never a repository.""",
    ).tag(config=True)

    push_secret = Unicode(
        "",
        help="""Name of a `kubernetes.io/dockerconfigjson` Secret with push credentials,
        mounted only into the push step of build pods (never where the repository's build
        steps run). Empty: push without credentials.""",
    ).tag(config=True)

    destinations = List(
        [],
        help="""Per-project destinations: where the images of some repositories go and with
        which credentials, first matching entry wins. Each entry: `repositories` (globs over
        `host/org/name`, e.g. `github.com/my-org/*`), `registry` (host[/path] the images go
        under, e.g. `quay.io/my-org`), `pushSecret` (a `kubernetes.io/dockerconfigjson`
        Secret in the build namespace, mounted only into the push step; empty: no
        credentials), `pullSecret` (optional: a Secret for pulling them, in the users' and
        the build namespace; the hub's pods get it), `allow` (the `.aicoe-ci.yaml` keys the
        repository may set, within `registry`: `registry`, `registry-org`,
        `registry-project`). Example: `[{"repositories": ["github.com/my-org/*"],
        "registry": "quay.io/my-org", "pushSecret": "my-org-robot", "allow":
        ["registry-project"]}]`. Unmapped repositories push to `registry` with
        `push_secret`, and a `registry`/`registry-org` key of theirs is refused (403).""",
    ).tag(config=True)

    tls_verify = Bool(
        _S.tls_verify,
        help="False: pull and push without TLS verification (a local registry).",
    ).tag(config=True)

    build_image = Unicode(
        _S.builder_image,
        help="""Image of build pods: buildah and git. The chart's admission policy admits
        build Jobs of this image only.""",
    ).tag(config=True)

    backend = Enum(
        ["kubernetes", "openshift", "auto"],
        default_value=_S.backend,
        help="""Build backend: `kubernetes` (a Job running buildah), `openshift` (OpenShift
        BuildConfigs/Builds), or `auto` (openshift when the API server serves
        build.openshift.io, found by discovery at start).""",
    ).tag(config=True)

    build_storage = Unicode(
        _S.build_storage,
        help="""Size of each build pod's emptyDir (buildah storage, the image archive) and
        the pod's ephemeral-storage limit: a Kubernetes quantity such as `20Gi`.""",
    ).tag(config=True)

    build_node_image_store = Unicode(
        _S.build_node_image_store,
        help="""A folder on each build node (an absolute path, e.g.
        `/var/lib/aicoe-builder/images`) where build pods keep the environment images they
        build: a later build of the same environment on that node uses it where it lies
        instead of pulling it (a notebook change then costs seconds). Mounted read-only where
        repository content runs, writable only by the push step. Empty: none (every build
        pod pulls). Grows with the environments built; clean it as a node's image cache.""",
    ).tag(config=True)

    build_node_selector = Dict(
        {},
        help="""nodeSelector of build pods (label: value), e.g. `{"node-role/builds": "true"}`
        to keep builds, which run repository content with buildah's capabilities, on nodes
        of their own. Empty: any node.""",
    ).tag(config=True)

    build_tolerations = List(
        [],
        help="""Tolerations of build pods (Kubernetes toleration objects, camelCase keys), to
        let them onto tainted build nodes, e.g. `[{"key": "builds", "operator": "Exists",
        "effect": "NoSchedule"}]`.""",
    ).tag(config=True)

    kubeconfig = Unicode(
        "",
        help="""kubeconfig file of the builder's credentials. Empty: in-cluster credentials
        when running in a pod, else the default kubeconfig.""",
    ).tag(config=True)

    # -- which repositories ---------------------------------------------------------------

    allowed_hosts = List(
        Unicode(),
        list(_S.allowed_hosts),
        help="""Git hosts builds may clone from (globs, e.g. `*.example.com`). Empty: only
        the private hosts.""",
    ).tag(config=True)

    private_hosts = List(
        Unicode(),
        help="""Hosts allowed to resolve to private or loopback addresses (refused
        otherwise), e.g. an in-cluster Git server.""",
    ).tag(config=True)

    allow_http = Bool(
        _S.allow_http,
        help="True: plain http:// repository URLs, for the private hosts only.",
    ).tag(config=True)

    # -- limits ---------------------------------------------------------------------------

    max_per_user = Integer(
        _S.max_per_user, min=1, help="Active (pending or building) builds per user."
    ).tag(config=True)

    max_total = Integer(
        _S.max_total, min=1, help="Active builds in total, across all replicas."
    ).tag(config=True)

    build_timeout = Integer(
        _S.timeout,
        min=1,
        help="Seconds a build may run before it is stopped and failed.",
    ).tag(config=True)

    max_image_streams_per_user = Integer(
        _S.max_image_streams_per_user,
        min=0,
        help="""ImageStreams one requester may have published (a build that would make one
        more is refused). 0: no limit. Builder admins are not limited.""",
    ).tag(config=True)

    max_streams = Integer(
        _S.max_streams, min=1, help="Open event streams (live build pages) per replica."
    ).tag(config=True)

    max_streams_per_user = Integer(
        _S.max_streams_per_user, min=1, help="Open event streams per user and replica."
    ).tag(config=True)

    # -- lifetimes ------------------------------------------------------------------------

    branch_ttl = Integer(
        _S.branch_ttl,
        min=0,
        help="Seconds images built from branches live after their last build. 0: forever.",
    ).tag(config=True)

    job_retention = Integer(
        _S.job_retention,
        min=0,
        help="Seconds finished build Jobs (and their pods) or Builds are kept, for debugging.",
    ).tag(config=True)

    record_retention = Integer(
        _S.record_retention,
        min=0,
        help="""Seconds finished build records (ImageBuild objects and their kept logs) and
        remembered webhook deliveries are kept. Default: a week.""",
    ).tag(config=True)

    cleanup_interval = Seconds(
        _S.cleanup_interval, help="Seconds between cleanup runs (finished Jobs, old records)."
    ).tag(config=True)

    reconcile_interval = Seconds(
        _S.interval,
        help="""Seconds before the leader tries again to reconcile a build whose reconcile
        failed (e.g. the API server did not answer). Builds are reconciled when a watch
        reports a change of their record, Job/Build or pod, not on a timer.""",
    ).tag(config=True)

    lease_duration = Seconds(
        _S.lease_duration,
        help="""Seconds a replica waits, after the leader last renewed its Lease
        (`coordination.k8s.io`, named aicoe-image-builder), before it takes over. Only the
        leader reconciles builds and runs the cleanup; every replica serves the API. A
        leader that stops cleanly hands over at once; one that dies is replaced after about
        this long.""",
    ).tag(config=True)

    lease_renew_interval = Seconds(
        _S.lease_renew,
        help="""Seconds between the leader's renewals of its Lease; shorter than
        lease_duration (a leader that could not renew for lease_duration minus this stops
        leading before another replica may take over).""",
    ).tag(config=True)

    resync_interval = Seconds(
        _S.resync_interval,
        help="""Seconds between the leader's passes over every active build (a safety net
        for a missed watch event; one list of the active records).""",
    ).tag(config=True)

    # -- secrets --------------------------------------------------------------------------

    webhook_secret = Unicode(
        "",
        help="GitHub webhook secret. Empty: webhook deliveries are refused.",
    ).tag(config=True)

    cookie_secret = Unicode(
        "",
        help="""Secret signing the OAuth and XSRF cookies (hex, or text), the same for every
        replica (the chart shares one Secret). Empty: derived from the service's
        JupyterHub API token, which every replica shares too.""",
    ).tag(config=True)

    # -- GitHub: issue builds and reporting back -------------------------------------------

    github_api_url = Unicode(
        _S.github_api_url,
        help="""GitHub's REST API. GitHub Enterprise Server: `https://<host>/api/v3`.""",
    ).tag(config=True)

    github_app_id = Unicode(
        "",
        help="""The GitHub App's ID (its settings page, "App ID"). With
        github_app_private_key_file, the builder acts as the App: a JWT signed with the key
        is exchanged for each installation's token. Empty: github_token is used, if set.""",
    ).tag(config=True)

    github_app_private_key_file = Unicode(
        "",
        help="""File holding the GitHub App's private key (PEM, as GitHub downloads it;
        mounted from a Secret). Read once at start; never logged.""",
    ).tag(config=True)

    github_token_file = Unicode(
        "",
        help="""File holding a GitHub token (a bot account's, or a fine-grained token with
        Commit statuses, Issues: read and write, and Metadata: read), used when no App is
        configured. Read once at start; never logged.""",
    ).tag(config=True)

    github_token = Unicode(
        "",
        help="""A GitHub token, as github_token_file (which wins when both are set). Prefer
        the file, or the environment variable from a Secret, to a config file.""",
    ).tag(config=True)

    github_issue_builds = Bool(
        _S.github_issue_builds,
        help="""Build on an issue opened from AICoE-CI's "Deliver Container Image" template
        (the webhook's Issues event; `Tag: x.y.z` in its body) when the person who opened it
        can push to the repository (asked of GitHub); anyone else gets a comment and no
        build. False: such issues are ignored. Needs a GitHub App or token.""",
    ).tag(config=True)

    public_url = Unicode(
        "",
        help="""The hub's public address as GitHub's users reach it, e.g.
        `https://jupyter.example.com`: the commit statuses and issue comments link to the
        build's launch link there. Empty: they carry no link.""",
    ).tag(config=True)

    # -- environment builds ---------------------------------------------------------------

    base_image = Unicode(
        _S.base_image,
        help="""Base image of environment builds (requirements.txt, environment.yml, …) and of
        `source` builds that name none.""",
    ).tag(config=True)

    python_base_images = Dict(
        value_trait=Unicode(),
        key_trait=Unicode(),
        default_value=dict(DEFAULT_PYTHON_BASE_IMAGES),
        help="""The Python versions a repository's runtime.txt / .python-version may name
        (`major.minor`), each with its base image; any other version is refused. As an
        environment variable: `3.12=<image>,3.11=<image>`.""",
    ).tag(config=True)

    package_index_url = Unicode(
        "",
        help="""PEP 503 package index environment builds install from (pip, uv,
        micropipenv). Empty: pip's default (PyPI).""",
    ).tag(config=True)

    package_index_trusted_host = Unicode(
        "", help="Host of package_index_url when it is plain http."
    ).tag(config=True)

    apt_sources = List(
        Unicode(),
        help="""sources.list lines apt.txt installs from, instead of the base image's own.
        As an environment variable: lines separated by newlines or `;`.""",
    ).tag(config=True)

    notebook_user = Unicode(
        _S.notebook_user,
        help="Owner (`uid:gid`) of the repository's files in environment builds.",
    ).tag(config=True)

    notebook_home = Unicode(
        _S.notebook_home, help="Folder the repository's files are placed in (environment builds)."
    ).tag(config=True)

    layer_cache = Bool(
        _S.layer_cache,
        help="""Environment builds keep an environment image (the base image with apt.txt and
        the Python packages installed) in `<registry>/<org>/<stream>-cache`, named by a hash of
        the environment files, their installs and the base image's manifest; a commit whose
        environment files are unchanged reuses it and installs nothing again. The build pods
        must be able to pull from that repository without credentials (the push step pushes
        it). False: no environment image.""",
    ).tag(config=True)

    # -- the image check ------------------------------------------------------------------

    check_image = Bool(
        _S.check_image,
        help="""False: offer built images without checking that they start a single-user
        server (docs/builder.md, "The image check").""",
    ).tag(config=True)

    hub_version = Unicode(
        "",
        help="""The hub's JupyterHub version, whose major version every built image must
        have. Empty: asked from the hub's API (hub_api_url) at the first build.""",
    ).tag(config=True)

    # -- image import ---------------------------------------------------------------------

    import_enabled = Bool(
        _S.import_enabled,
        help="""False: no image import of the catalog's `from: DockerImage` tags (on OpenShift
        there is none anyway: the platform imports).""",
    ).tag(config=True)

    import_namespaces = List(
        Unicode(),
        help="Namespaces whose notebook ImageStreams are imported. Empty: `namespace`.",
    ).tag(config=True)

    import_interval = Seconds(
        _S.import_interval,
        help="Seconds between re-imports of `importPolicy.scheduled` tags (OpenShift's 15 min).",
    ).tag(config=True)

    import_retry = Seconds(
        _S.import_retry, help="Seconds before a failed import is tried again."
    ).tag(config=True)

    import_poll = Seconds(
        _S.import_poll,
        help="Seconds between passes over the streams (a new stream waits at most this long).",
    ).tag(config=True)

    # -- who sees which image -------------------------------------------------------------

    image_policy = Dict(
        help="""`{"default_policy": {…}, "group_policies": {…}}`: the spawner's dicts of the
        same names, so that GET api/images shows each user only the images their spawn page
        offers (the chart passes hub.config.AICoESpawner's). Empty: every image that is not
        hidden. As an environment variable: JSON.""",
    ).tag(config=True)

    # -- the service's address (JupyterHub sets these for a service it runs) -------------

    service_url = Unicode(
        "http://127.0.0.1:8890",
        help="URL the service is reached at; its port is the port listened on.",
    ).tag(config=True)

    service_prefix = Unicode(
        "/services/image-builder/", help="URL prefix of the service's pages and API."
    ).tag(config=True)

    bind_ip = Unicode(
        "",
        help="""Address to listen on, e.g. `0.0.0.0` in z2jh's hub pod. Empty: the host of
        service_url.""",
    ).tag(config=True)

    hub_api_url = Unicode(
        "",
        help="""The hub's API URL, asked for the hub's version (hub_version). Empty: the hub
        is not asked.""",
    ).tag(config=True)

    # -- validation of what a type alone does not say (config_checks.CHECKS) -------------

    @validate(*CHECKS)
    def _checked(self, proposal) -> Any:
        """The value its check keeps; TraitError naming the setting."""
        return CHECKS[proposal.trait.name](proposal.trait.name, proposal.value)

    # -- loading and starting (config_loading) --------------------------------------------

    env_config = config_loading.env_config
    initialize = config_loading.initialize
    settings = config_loading.settings
    start = config_loading.start


def settings_from_env(env: Mapping[str, str] = os.environ) -> Settings:
    """The settings of ``env`` alone (no config file, no command line)."""
    app = ImageBuilder()
    app.update_config(app.env_config(env))
    return app.settings()
