"""AICoESpawner: KubeSpawner with a live ImageStream catalog, strict user_options and pods
started on the image digest."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import OrderedDict
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from jupyterhub import orm
from jupyterhub.utils import url_path_join
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from markupsafe import Markup
from sqlalchemy import event
from tornado import web
from traitlets import Bool, Dict, Float, Int, List, Unicode, default, validate

from . import options as opts
from .catalog import NOTEBOOK_IMAGE_LABEL, Catalog, format_image_ref
from .watch import ImageStreamWatch

ANNOTATION_PREFIX = "aicoe-spawner.io/"
SECRET_ENV_COMPONENT = "singleuser-secret-env"

DEFAULT_SIZES = [
    {
        "name": "small",
        "display_name": "Small",
        "description": "For exploring and light work",
        "cpu_guarantee": 0.5,
        "cpu_limit": 1,
        "mem_guarantee": "1Gi",
        "mem_limit": "2Gi",
        "default": True,
    },
    {
        "name": "medium",
        "display_name": "Medium",
        "description": "For everyday data science",
        "cpu_guarantee": 1,
        "cpu_limit": 2,
        "mem_guarantee": "4Gi",
        "mem_limit": "8Gi",
    },
    {
        "name": "large",
        "display_name": "Large",
        "description": "For training and big data sets",
        "cpu_guarantee": 2,
        "cpu_limit": 4,
        "mem_guarantee": "8Gi",
        "mem_limit": "16Gi",
    },
]

_templates = Environment(
    loader=PackageLoader("aicoe_spawner", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
# Rendered options forms by their inputs (catalog version, policy, preselection, settings).
_rendered_forms: OrderedDict[tuple, str] = OrderedDict()
_RENDERED_FORMS_MAX = 64
# Rendered image cards by (stream, resourceVersion, choice); a few per stream.
_rendered_cards: OrderedDict[tuple, Markup] = OrderedDict()
_RENDERED_CARDS_MAX = 50_000

_templates.filters["cpu"] = opts.format_cpu
_templates.filters["memory"] = opts.format_memory


def _literal(value: str) -> str:
    """Protect text from KubeSpawner's ``str.format`` expansion of annotations and labels."""
    return value.replace("{", "{{").replace("}", "}}")


def without_secret_values(user_options: Any) -> Any:
    """``user_options`` as they may be stored: ``secret_env`` values replaced by their names.

    Returns the input unchanged when there is nothing to strip (a copy otherwise).
    """
    if not isinstance(user_options, dict) or "secret_env" not in user_options:
        return user_options
    stripped = dict(user_options)
    secret = stripped.pop("secret_env")
    names = (
        list(stripped.get("secret_env_names") or [])
        if isinstance(stripped.get("secret_env_names"), list)
        else []
    )
    if isinstance(secret, dict):
        names += [str(n) for n in secret if str(n) not in names]
    stripped["secret_env_names"] = sorted(names, key=str)
    return stripped


@event.listens_for(orm.Spawner.user_options, "set", retval=True)
def _never_store_secret_values(target, value, oldvalue, initiator):
    """JupyterHub saves the user_options of every spawn request in its database before the
    spawner sees them (REST API, form, links): keep only the names of secret env vars there.
    The spawner still gets the values in memory (``Spawner.user_options``)."""
    return without_secret_values(value)


class AICoESpawner(KubeSpawner):
    """Spawns notebook pods from Open Data Hub notebook ImageStreams, at a chosen size."""

    image_namespaces = List(
        Unicode(),
        config=True,
        help="""Namespaces whose notebook ImageStreams are offered.
        Default: the namespace the spawner starts pods in.""",
    )
    image_label_selector = Unicode(
        f"{NOTEBOOK_IMAGE_LABEL}=true",
        config=True,
        help="Label selector that picks the ImageStreams offered as notebook images.",
    )
    catalog_sync_timeout = Float(
        10,
        config=True,
        help="""Seconds to wait for the first listing of ImageStreams after the hub starts,
        before the form is shown without images and spawns are refused with 503.""",
    )
    sizes = List(
        Dict(),
        default_value=DEFAULT_SIZES,
        config=True,
        help="""Sizes a user can choose: a list of dicts with name, display_name, description,
        cpu_guarantee, cpu_limit (cores, e.g. 0.5 or "500m"), mem_guarantee, mem_limit
        (e.g. "2Gi") and default (true for the preselected size).""",
    )
    allow_custom_resources = Bool(
        False,
        config=True,
        help="Let users type their own CPU and memory (within max_cpu and max_memory).",
    )
    max_cpu = Float(8, config=True, help="Upper bound for a custom CPU request, in cores.")
    max_memory = Unicode(
        "32Gi", config=True, help='Upper bound for a custom memory request, e.g. "32Gi".'
    )
    gpu_resource_name = Unicode(
        "nvidia.com/gpu",
        config=True,
        help="Extended resource name that GPUs are requested as.",
    )
    max_gpus = Int(
        0,
        config=True,
        help="""GPUs any user may request. 0 offers no GPU choice; group_policies may allow
        more for some groups.""",
    )
    gpu_tolerations = List(
        Dict(),
        default_value=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        config=True,
        help="Tolerations added to pods that request at least one GPU.",
    )
    gpu_node_selector = Dict(
        config=True, help="Node selector added to pods that request at least one GPU."
    )
    reserved_env_names = List(
        Unicode(),
        config=True,
        help="""Environment variable names users may not set, in addition to the built-in
        JUPYTERHUB_*, JPY_*, JUPYTER_IMAGE*, MEM_* and CPU_* names.""",
    )
    reserved_env_prefixes = List(
        Unicode(),
        config=True,
        help="""Environment variable name prefixes users may not set, in addition to the
        built-in ones.""",
    )
    max_env_vars = Int(50, config=True, help="Most environment variables a user may set.")
    max_env_value_length = Int(
        32768, config=True, help="Longest environment variable value a user may set, in bytes."
    )
    default_policy = Dict(
        {"images": ["*"], "sizes": ["*"]},
        config=True,
        help="""What every user may choose: {"images": [patterns], "sizes": [patterns],
        "max_gpus": n}. Image patterns match "namespace/stream" or "stream" (fnmatch).""",
    )
    group_policies = Dict(
        config=True,
        help="""More choices for members of JupyterHub groups, by group name, in the shape of
        default_policy. A user gets the union of the default and their groups' policies.""",
    )

    @validate("sizes")
    def _validate_sizes(self, proposal):
        sizes = [opts.Size.from_config(s) for s in proposal["value"]]
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise ValueError(f"sizes: names must be unique, got {names}")
        return proposal["value"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in the hub (e.g. generating docs): the watch starts on first use
        self.catalog_watch()

    # -- catalog and policy -----------------------------------------------------------------

    @property
    def catalog_namespaces(self) -> tuple[str, ...]:
        return tuple(self.image_namespaces or [self.namespace])

    def catalog_watch(self) -> ImageStreamWatch:
        """The hub-wide ImageStream cache (started on first use)."""
        return ImageStreamWatch.shared(
            self.catalog_namespaces,
            self.image_label_selector,
            lambda: shared_client("CustomObjectsApi"),
            log=self.log,
        )

    def user_policy(self) -> opts.Policy:
        """What this user may choose, from the default policy and their groups."""
        return opts.effective_policy(
            sizes=[opts.Size.from_config(s) for s in self.sizes],
            default_policy=self.default_policy,
            group_policies=self.group_policies,
            groups=[g.name for g in getattr(self.user, "groups", [])],
            max_gpus=self.max_gpus,
            allow_custom_resources=self.allow_custom_resources,
            max_cpu=self.max_cpu,
            max_memory=opts.parse_memory(self.max_memory),
            reserved_env_names=self.reserved_env_names,
            reserved_env_prefixes=self.reserved_env_prefixes,
            max_env_vars=self.max_env_vars,
            max_env_value_bytes=self.max_env_value_length,
        )

    # -- options: form, query and REST alike ------------------------------------------------

    @default("options_from_form")
    def _default_options_from_form(self):
        return _options_from_form

    def options_from_query(self, query_data):
        """``/hub/spawn?…`` links take the form's fields, except secrets: a URL ends up in
        browser histories and access logs."""
        if any(str(k).startswith("secret_env") for k in query_data):
            raise web.HTTPError(
                400, "secret_env: secret values cannot be given in a link; use the form"
            )
        return super().options_from_query(query_data)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return AICoESpawner.apply_aicoe_options

    async def apply_aicoe_options(self, user_options: Any) -> None:
        """Validate ``user_options`` against the live catalog and the user's policy and
        configure the pod from them; any problem is HTTP 400 naming the field.

        JupyterHub calls this (as ``apply_user_options``) before ``start()`` for the form,
        ``/hub/spawn?…`` links and the REST API alike.
        """
        # Whatever happens next, secret values do not stay in the spawner's user_options.
        self.user_options = without_secret_values(user_options)
        watch = self.catalog_watch()
        if not await watch.wait_synced(self.catalog_sync_timeout):
            raise web.HTTPError(503, "image: the image catalog is not available yet, try again")
        try:
            chosen = opts.validate(user_options, watch.catalog, self.user_policy(), self.namespace)
        except opts.OptionsError as e:
            raise web.HTTPError(400, str(e)) from None
        self._apply(chosen)
        canonical = chosen.to_user_options(self.namespace)
        self.user_options = canonical
        if self.orm_spawner is not None:
            # JupyterHub commits right after start() begins; no extra commit needed here.
            self.orm_spawner.user_options = canonical

    _APPLIED_TRAITS = (
        "image",
        "cpu_guarantee",
        "cpu_limit",
        "mem_guarantee",
        "mem_limit",
        "extra_resource_limits",
        "tolerations",
        "node_selector",
        "extra_annotations",
    )

    def _apply(self, chosen: opts.SpawnOptions) -> None:
        # A Spawner object lives across spawns: start every spawn from the configured values.
        if self._configured is None:
            self._configured = {name: getattr(self, name) for name in self._APPLIED_TRAITS}
        for name, value in self._configured.items():
            setattr(self, name, value)
        size = chosen.size
        self.image = chosen.image_ref
        if chosen.cpu is not None:
            self.cpu_guarantee = self.cpu_limit = chosen.cpu
        else:
            self.cpu_guarantee, self.cpu_limit = size.cpu_guarantee, size.cpu_limit
        if chosen.memory is not None:
            self.mem_guarantee = self.mem_limit = chosen.memory
        else:
            self.mem_guarantee, self.mem_limit = size.mem_guarantee, size.mem_limit
        if chosen.gpus:
            self.extra_resource_limits = {
                **self.extra_resource_limits,
                self.gpu_resource_name: str(chosen.gpus),
            }
            self.tolerations = [*self.tolerations, *self.gpu_tolerations]
            self.node_selector = {**self.node_selector, **self.gpu_node_selector}
        self._user_env = dict(chosen.env)
        self._secret_env = dict(chosen.secret_env)
        self._secret_env_names = sorted(chosen.secret_env)
        self.extra_annotations = {
            **self.extra_annotations,
            f"{ANNOTATION_PREFIX}image-stream": _literal(chosen.image.key),
            f"{ANNOTATION_PREFIX}image-tag": _literal(chosen.tag.name),
            f"{ANNOTATION_PREFIX}image-digest": _literal(chosen.tag.digest or ""),
            f"{ANNOTATION_PREFIX}size": _literal(size.name),
            f"{ANNOTATION_PREFIX}gpus": str(chosen.gpus),
        }

    _user_env: dict[str, str] = {}
    _secret_env: dict[str, str] = {}
    _secret_env_names: list[str] = []
    _configured: dict[str, Any] | None = None

    def get_env(self) -> dict[str, Any]:
        """KubeSpawner's env plus the user's variables, set literally (never expanded), and
        the user's secret variables as references to their Secret (never their values)."""
        env = super().get_env()
        # Kubernetes expands $(VAR) in env values and turns $$ into $: doubling every $ makes
        # the container see exactly what the user typed.
        env.update({name: value.replace("$", "$$") for name, value in self._user_env.items()})
        for name in self._secret_env_names:
            env[name] = {"valueFrom": {"secretKeyRef": {"name": self.secret_env_name, "key": name}}}
        return env

    # -- secret env vars: a per-user Secret, owned by the pod -------------------------------

    @property
    def secret_env_name(self) -> str:
        """Name of the Secret that holds this server's secret env values."""
        return f"{self.pod_name}-env"

    def start(self):
        self._start_future = asyncio.ensure_future(self._start_with_secret_env())
        return self._start_future

    async def _start_with_secret_env(self):
        if self._secret_env_names:
            await self._create_secret_env()
        self._starting = True
        try:
            return await self._start()
        except TimeoutError as e:
            if self._secret_env_written:
                await self._delete_secret_env()
            reason = self._last_warning()
            raise TimeoutError(f"{e} {reason}" if reason else str(e)) from e
        except BaseException:
            if self._secret_env_written:
                await self._delete_secret_env()
            raise
        finally:
            self._starting = False

    def _last_warning(self) -> str:
        """The cluster's last warning about this pod (e.g. the scheduler's "0/1 nodes are
        available: 1 Insufficient nvidia.com/gpu."), for the user's spawn failure message."""
        warnings = [e for e in self.events if e.get("type") == "Warning" and e.get("message")]
        return f"Last event: {warnings[-1]['message']}" if warnings else ""

    # Whether this server's Secret exists (kept in the spawner state across hub restarts), so
    # that spawns without secret env vars make no extra API requests.
    _secret_env_written = False

    def get_state(self):
        state = super().get_state()
        if self._secret_env_written:
            state["secret_env_secret"] = self.secret_env_name
        return state

    def load_state(self, state):
        super().load_state(state)
        self._secret_env_written = bool(state.get("secret_env_secret"))

    def clear_state(self):
        super().clear_state()
        self._secret_env_written = False

    def _secret_env_metadata(self) -> dict[str, Any]:
        return {
            "name": self.secret_env_name,
            "labels": {
                "app.kubernetes.io/managed-by": "aicoe-spawner",
                "component": SECRET_ENV_COMPONENT,
                "hub.jupyter.org/servername": self._expand_user_properties("{servername}"),
            },
            "annotations": {
                "hub.jupyter.org/username": self.user.name,
                f"{ANNOTATION_PREFIX}pod": self.pod_name,
            },
        }

    async def _create_secret_env(self) -> None:
        values = dict(self._secret_env)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": self._secret_env_metadata(),
            "data": {
                name: base64.b64encode(values.get(name, "").encode("utf-8")).decode("ascii")
                for name in self._secret_env_names
            },
        }
        try:
            try:
                await asyncio.wait_for(
                    self.api.create_namespaced_secret(self.namespace, body),
                    self.k8s_api_request_timeout,
                )
            except ApiException as e:
                if e.status != 409:
                    raise
                # Left over from a spawn whose stop did not finish: replace it.
                await self._delete_secret_env(force=True)
                await asyncio.wait_for(
                    self.api.create_namespaced_secret(self.namespace, body),
                    self.k8s_api_request_timeout,
                )
        except ApiException as e:
            # Never log the body: it holds the values.
            self.log.error(
                "Could not create Secret %s/%s for %s: %s %s",
                self.namespace,
                self.secret_env_name,
                self._log_name,
                e.status,
                e.reason,
            )
            raise web.HTTPError(
                500, "secret_env: could not store the secret environment variables"
            ) from None
        finally:
            # The values now live in the Secret only.
            self._secret_env = {}
        self._secret_env_written = True
        self.log.info(
            "Stored secret env %s for %s in Secret %s",
            ", ".join(self._secret_env_names),
            self._log_name,
            self.secret_env_name,
        )

    async def _own_secret_env(self, pod_uid: str) -> None:
        """Make the pod the Secret's owner: Kubernetes deletes it with the pod."""
        patch = {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": self.pod_name,
                        "uid": pod_uid,
                        "blockOwnerDeletion": False,
                        "controller": False,
                    }
                ]
            }
        }
        try:
            await asyncio.wait_for(
                self.api.patch_namespaced_secret(self.secret_env_name, self.namespace, patch),
                self.k8s_api_request_timeout,
            )
        except (ApiException, TimeoutError) as e:
            # Not fatal: stop() deletes the Secret as well.
            self.log.warning("Could not set the owner of Secret %s: %s", self.secret_env_name, e)

    async def _delete_secret_env(self, force: bool = False) -> None:
        if not (force or self._secret_env_written):
            return
        try:
            await asyncio.wait_for(
                self.api.delete_namespaced_secret(self.secret_env_name, self.namespace),
                self.k8s_api_request_timeout,
            )
        except ApiException as e:
            if e.status != 404:
                self.log.warning(
                    "Could not delete Secret %s: %s %s", self.secret_env_name, e.status, e.reason
                )
            else:
                self._secret_env_written = False
        except TimeoutError:
            self.log.warning("Timed out deleting Secret %s", self.secret_env_name)
        else:
            self._secret_env_written = False
            self.log.info("Deleted Secret %s", self.secret_env_name)

    async def _make_create_pod_request(self, pod, request_timeout):
        created = await super()._make_create_pod_request(pod, request_timeout)
        if created and self._secret_env_names:
            uid = await self._created_pod_uid()
            if uid:
                await self._own_secret_env(uid)
        return created

    async def _created_pod_uid(self, timeout: float = 10) -> str | None:
        ref_key = f"{self.namespace}/{self.pod_name}"
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            pod = self.pod_reflector.pods.get(ref_key)
            uid = (pod or {}).get("metadata", {}).get("uid")
            if uid and not pod["metadata"].get("deletionTimestamp"):
                return uid
            await asyncio.sleep(0.05)
        return None

    _starting = False

    async def stop(self, now=False):
        try:
            await super().stop(now)
        finally:
            # KubeSpawner's start() stops a conflicting old pod before creating the new one:
            # the new Secret stays (a failed start deletes it itself).
            if not self._starting:
                await self._delete_secret_env()

    # -- the options form -------------------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return AICoESpawner.render_options_form

    async def render_options_form(self) -> str:
        """The options form, from the in-memory catalog (no API request)."""
        watch = self.catalog_watch()
        await watch.wait_synced(self.catalog_sync_timeout)
        catalog = watch.catalog
        policy = self.user_policy()
        selected = self._preselection(catalog, policy)
        config = self._form_config(policy)
        # The form is a pure function of these inputs: users with the same policy and choice
        # share one rendering per catalog version.
        key = (
            id(watch),
            watch.version,
            watch.stale,
            repr(policy),
            json.dumps(selected, sort_keys=True, default=str),
            json.dumps(config, sort_keys=True),
            self.namespace,
            self.form_filter_threshold,
        )
        cached = _rendered_forms.get(key)
        if cached is not None:
            _rendered_forms.move_to_end(key)
            return cached
        html = self._render_form_html(watch, catalog, policy, selected, config)
        _rendered_forms[key] = html
        while len(_rendered_forms) > _RENDERED_FORMS_MAX:
            _rendered_forms.popitem(last=False)
        return html

    def _form_config(self, policy: opts.Policy) -> dict[str, Any]:
        """Settings the form's script needs."""
        base_url = self.hub.base_url if self.hub is not None else "/hub/"
        user_path = self.user.escaped_name if self.user is not None else ""
        poll_url = url_path_join(base_url, "spawn", user_path)
        if self.name:
            poll_url = url_path_join(poll_url, self.name)
        return {
            "spawn_url": url_path_join(base_url, "spawn"),
            "poll_url": poll_url,
            "poll_interval_ms": int(self.form_poll_interval * 1000),
            "reserved_names": sorted(policy.reserved_env_names),
            "reserved_prefixes": list(policy.reserved_env_prefixes),
            "max_env_vars": policy.max_env_vars,
            "max_env_value_bytes": policy.max_env_value_bytes,
            "max_cpu": policy.max_cpu,
            "max_memory": policy.max_memory,
            "max_cpu_text": opts.format_cpu(policy.max_cpu) if policy.max_cpu is not None else "",
            "max_memory_text": opts.format_memory(policy.max_memory)
            if policy.max_memory is not None
            else "",
            "max_gpus": policy.max_gpus,
        }

    def _render_form_html(
        self,
        watch: ImageStreamWatch,
        catalog: Catalog,
        policy: opts.Policy,
        selected: dict[str, Any],
        config: dict[str, Any],
    ) -> str:
        images = [
            _image_view(i, self.namespace, selected["image"])
            for i in catalog.visible()
            if policy.allows_image(i)
        ]
        if selected["image"] is None:
            # No valid default (e.g. nothing ready yet): preselect the first usable card.
            first = next((i for i in images if i["usable"]), None)
            if first is not None:
                first["selected"] = True
        versions = {i.key: i.resource_version for i in catalog.images}
        cards = {
            view["key"]: _image_card(view, versions.get(view["key"], ""), self.namespace)
            for view in images
        }
        namespaces = list(dict.fromkeys(i["namespace"] for i in images))
        groups = [(ns, [i for i in images if i["namespace"] == ns]) for ns in namespaces]
        state = {
            "version": watch.version,
            "stale": watch.stale,
            "shape": [[i["key"], [t["ref"] for t in i["tags"]]] for i in images],
            "tags": {
                t["ref"]: {"phase": t["phase"], "message": t["message"]}
                for i in images
                for t in i["tags"]
            },
        }
        env_rows = [
            {"name": k, "value": v, "secret": False} for k, v in sorted(selected["env"].items())
        ] + [{"name": k, "value": "", "secret": True} for k in selected["secret_env_names"]]
        return _templates.get_template("options_form.html").render(
            images=images,
            cards=cards,
            groups=groups,
            policy=policy,
            sizes=[_size_view(s) for s in policy.sizes],
            selected=selected,
            stale=watch.stale,
            state=state,
            config=config,
            env_rows=env_rows,
            filter_threshold=self.form_filter_threshold,
        )

    form_poll_interval = Float(
        2.0,
        config=True,
        help="""Seconds between the options form's checks for image readiness changes while
        it is open (it re-reads its own page). 0 turns live updates off.""",
    )
    form_filter_threshold = Int(
        8, config=True, help="Show a filter box above the images when there are more than this."
    )

    def _preselection(self, catalog, policy) -> dict[str, Any]:
        """The saved choices while still valid, else the defaults."""
        saved = dict(self.user_options or {})
        names = saved.get("secret_env_names")
        secret_names = [
            n
            for n in (names if isinstance(names, list) else [])
            if isinstance(n, str)
            and opts.ENV_NAME_RE.fullmatch(n)
            and not policy.env_name_reserved(n)
        ]
        for candidate in (saved, {}):
            candidate = {
                k: v for k, v in candidate.items() if k not in ("secret_env_names", "secret_env")
            }
            try:
                chosen = opts.validate(candidate, catalog, policy, self.namespace)
            except opts.OptionsError as e:
                if candidate:
                    self.log.info(
                        "Saved options for %s no longer valid (%s); using defaults",
                        self._log_name,
                        e,
                    )
                continue
            return {
                "image": format_image_ref(chosen.image, chosen.tag, self.namespace),
                "size": chosen.size.name,
                "cpu": chosen.cpu,
                "memory": candidate.get("memory") if chosen.memory is not None else None,
                "gpus": chosen.gpus,
                "env": chosen.env,
                "secret_env_names": [n for n in secret_names if n not in chosen.env],
            }
        size = policy.default_size()
        return {
            "image": None,
            "size": size.name if size else None,
            "cpu": None,
            "memory": None,
            "gpus": 0,
            "env": {},
            "secret_env_names": secret_names,
        }


def _image_card(view: dict[str, Any], resource_version: str, namespace: str) -> Markup:
    """The HTML of one image card, rendered once per stream version and choice: after a change
    to one stream only its card is rendered again."""
    key = (view["key"], resource_version, namespace, view["chosen"], view["selected"])
    html = _rendered_cards.get(key)
    if html is None:
        html = Markup(_templates.get_template("_image_card.html").render(image=view))
        _rendered_cards[key] = html
        while len(_rendered_cards) > _RENDERED_CARDS_MAX:
            _rendered_cards.popitem(last=False)
    else:
        _rendered_cards.move_to_end(key)
    return html


def _image_view(image, default_namespace: str, selected_ref: str | None) -> dict[str, Any]:
    """What the form shows of one image (plain data; the template escapes all of it)."""
    tags = []
    for tag in image.offered_tags():
        tags.append(
            {
                "ref": format_image_ref(image, tag, default_namespace),
                "name": tag.name,
                "phase": str(tag.phase),
                "message": tag.message,
                "ready": tag.ready,
                "recommended": tag.recommended,
                "default": tag.default,
                "software": tag.software,
                "python_dependencies": tag.python_dependencies,
                "commit": tag.build_commit,
            }
        )
    refs = [t["ref"] for t in tags]
    chosen = selected_ref if selected_ref in refs else None
    if chosen is None:
        ready = [t for t in tags if t["ready"]]
        for wanted in (lambda t: t["default"], lambda t: t["recommended"], lambda t: True):
            found = next((t for t in ready if wanted(t)), None)
            if found is not None:
                chosen = found["ref"]
                break
    if chosen is None and tags:
        chosen = tags[0]["ref"]
    search = " ".join(
        [image.display_name, image.name, image.description, *image.recommended_accelerators]
        + [p.name for t in image.offered_tags() for p in (*t.software, *t.python_dependencies)]
    )
    return {
        "key": image.key,
        "namespace": image.namespace,
        "name": image.name,
        "display_name": image.display_name,
        "description": image.description,
        "url": image.url,
        "accelerators": list(image.recommended_accelerators),
        "creator": image.creator,
        "tags": tags,
        "chosen": chosen,
        "selected": chosen is not None and chosen == selected_ref,
        "usable": any(t["ready"] for t in tags),
        "search": search.casefold(),
    }


def _size_view(size: opts.Size) -> dict[str, Any]:
    """A size with its resources in words."""
    parts = []
    if size.cpu_guarantee is not None or size.mem_guarantee is not None:
        got = [
            opts.format_cpu(size.cpu_guarantee) if size.cpu_guarantee is not None else None,
            f"{opts.format_memory(size.mem_guarantee)} memory"
            if size.mem_guarantee is not None
            else None,
        ]
        parts.append("Guaranteed " + " and ".join(p for p in got if p))
    if size.cpu_limit is not None or size.mem_limit is not None:
        up = [
            opts.format_cpu(size.cpu_limit) if size.cpu_limit is not None else None,
            f"{opts.format_memory(size.mem_limit)} memory" if size.mem_limit is not None else None,
        ]
        parts.append("can use up to " + " and ".join(p for p in up if p))
    words = ", ".join(parts)
    return {
        "name": size.name,
        "display_name": size.display_name,
        "description": size.description,
        "words": (words[:1].upper() + words[1:]) if words else "No fixed resources",
    }


def _options_from_form(form_data: dict[str, list[str]]) -> dict[str, Any]:
    """Form and query data -> raw user_options; validation happens in apply_aicoe_options."""
    try:
        return opts.options_from_form(form_data)
    except opts.OptionsError as e:
        raise web.HTTPError(400, str(e)) from None
