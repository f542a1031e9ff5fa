"""The options form: the catalog, sizes and the user's choices rendered as HTML.

Rendered from the in-memory catalog (no API request). The same view serves the plain form, a
``/hub/spawn?…`` link (the link's choice preselected and described, nothing started), a rejected
choice (the user's entries kept, the message by its field) and a link opened while the user's
server runs with other options.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from jinja2.utils import htmlsafe_json_dumps
from jupyterhub.utils import url_path_join
from markupsafe import Markup

from . import options as opts
from .catalog import Catalog, format_image_ref
from .watch import ImageStreamWatch

_templates = Environment(
    loader=PackageLoader("aicoe_spawner", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
# Rendered options forms by their inputs (catalog version, policy, preselection, settings),
# split around the per-user poll URL: (before, after). Users with the same policy and choice
# share one entry however many users the hub has.
_rendered_forms: OrderedDict[tuple, tuple[Segment, Segment]] = OrderedDict()
_RENDERED_FORMS_MAX = 64
# ... and at most this many bytes of them (uncompressed and compressed together).
_RENDERED_FORMS_MAX_BYTES = 128 * 2**20
# Stands for the poll URL in a cached rendering (as the JSON string the template writes).
_POLL_URL_SLOT = "aicoe-poll-url-slot-7c1f0b"
# Rendered image cards by (stream, resourceVersion, choice); a few per stream.
_rendered_cards: OrderedDict[tuple, Markup] = OrderedDict()
_RENDERED_CARDS_MAX = 50_000
_INDENT = re.compile(r"\n[ \t]+")

_templates.filters["cpu"] = opts.format_cpu
_templates.filters["memory"] = opts.format_memory

#: Form layouts: "lean" cards leave their version list and package lists to be loaded when
#: opened; "full" cards (the design before issue 12) carry them.
LAYOUTS = ("lean", "full")

#: Where the lean form's live updates come from, under the hub's base URL (+ user[/server]).
STATE_PATH = "aicoe/form-state"

#: Set by the spawn page while it builds a page: the form is then handed over as
#: :class:`FormParts` (cached, compressed once) instead of one string.
composing_page: ContextVar[bool] = ContextVar("aicoe_composing_page", default=False)

#: What JupyterHub's spawn.html holds in place of the form while a page is composed.
FORM_MARKER = "<!--aicoe-options-form-4f2a9c-->"


class Segment:
    """A piece of a page as UTF-8 bytes, with its raw-deflate compression made once (ending in
    a sync flush, so compressed pieces can be joined into one gzip stream) and its text kept
    once asked for (a form returned as one string)."""

    __slots__ = ("_t", "_z", "data")

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self._t: str | None = None
        self._z: bytes | None = None

    @property
    def text(self) -> str:
        if self._t is None:
            self._t = self.data.decode("utf-8")
        return self._t

    @property
    def compressed(self) -> bytes:
        if self._z is None:
            c = zlib.compressobj(6, zlib.DEFLATED, -15, 9)
            self._z = c.compress(self.data) + c.flush(zlib.Z_SYNC_FLUSH)
        return self._z

    @property
    def size(self) -> int:
        """Bytes held: the UTF-8 data, and the compressed data and the text once made."""
        text = sys.getsizeof(self._t) if self._t is not None else 0
        return len(self.data) + (len(self._z) if self._z is not None else 0) + text


class FormParts(str):
    """The options form as pieces, for the spawn page to send without joining them: it reads
    as :data:`FORM_MARKER` where JupyterHub's template puts the form."""

    segments: tuple[Segment, ...]

    def __new__(cls, segments: tuple[Segment, ...]) -> FormParts:
        obj = super().__new__(cls, FORM_MARKER)
        obj.segments = segments
        return obj

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)


def _as_form(html: str) -> str:
    return FormParts((Segment(html),)) if composing_page.get() else html


@dataclass
class FormContext:
    """What a spawn page shows besides the catalog: the user's entries with the message of a
    rejected choice, or a link's choice, or a notice that the user's server already runs."""

    entries: dict[str, list[str]] | None = None
    error: opts.OptionsError | None = None
    notice: dict[str, Any] | None = None
    #: What was refused: "link" (a ``/hub/spawn?…`` link) or "form" (the user's Start).
    source: str = "form"


#: Which part of the form shows the message of a rejected field.
_ERROR_SLOTS = {
    "image": "image",
    "size": "size",
    "profile": "size",
    "size_options": "size",
    "cpu": "cpu",
    "memory": "memory",
    "gpus": "gpus",
    "env": "env",
    "secret_env": "env",
}


def error_slots(error: opts.OptionsError | None) -> dict[str, str]:
    """``{slot: message}`` for the form: the message goes next to the field it is about (and
    into the summary at the top), and names that field (``"gpus: must be …"``)."""
    if error is None:
        return {}
    root, _, name = error.field.partition(".")
    slot = _ERROR_SLOTS.get(root, "form")
    if slot == "form":
        return {"form": str(error)}
    return {slot: str(error), "env_name": name}


#: The summary's order: the form's, top to bottom.
_SUMMARY_SLOTS = ("form", "image", "size", "cpu", "memory", "gpus", "env")


def error_summary(
    errors: dict[str, str], policy: opts.Policy, env_rows: list[dict[str, Any]]
) -> tuple[list[tuple[str, str, str]], int | None]:
    """What the summary at the top of a refused form lists: ``(slot, message, id of the
    control the message is about)`` in the form's order (``""``: the form shows no such
    control, e.g. ``cpu`` without custom resources: the summary is then its only place), and
    the index of the env row a message names (None: no row)."""
    env_row = next(
        (
            i
            for i, row in enumerate(env_rows)
            if errors.get("env") and errors.get("env_name") and row["name"] == errors["env_name"]
        ),
        None,
    )
    custom = policy.allow_custom_resources
    targets = {
        "form": "",
        "image": "aicoe-images",
        "size": "aicoe-sizes",
        "cpu": "aicoe-cpu" if custom else "",
        "memory": "aicoe-memory" if custom else "",
        "gpus": "aicoe-gpus" if policy.max_gpus > 0 else "aicoe-gpus-error",
        "env": f"aicoe-env-name-{env_row}" if env_row is not None else "aicoe-env",
    }
    items = [(slot, errors[slot], targets[slot]) for slot in _SUMMARY_SLOTS if errors.get(slot)]
    return items, env_row


class FormView:
    """Mixin for AICoESpawner: the options form."""

    async def render_options_form(self, context: FormContext | None = None) -> str:
        """The options form, from the in-memory catalog (no API request)."""
        watch = self.catalog_watch()
        await watch.wait_synced(self.catalog_sync_timeout)
        catalog = watch.catalog
        policy = self.user_policy()
        if context is not None:
            # Entries, messages and notices are this request's: never cached.
            selected = self._preselection(catalog, policy)
            if context.entries is not None:
                selected = _selection_from_entries(context.entries, policy, selected)
            return _as_form(
                self._render_form_html(
                    watch,
                    catalog,
                    policy,
                    selected,
                    self._form_config(policy),
                    errors=error_slots(context.error),
                    notice=context.notice,
                    error_source=context.source,
                )
            )
        selected = self._preselection(catalog, policy)
        config = self._form_config(policy)
        # The form is a pure function of these inputs: users with the same policy and choice
        # share one rendering per catalog version. The poll URL names the user: it is put into
        # the cached rendering per request instead of being part of the key.
        poll_url = config.pop("poll_url")
        key = (
            id(watch),
            watch.version,
            watch.stale,
            repr(policy),
            json.dumps(selected, sort_keys=True, default=str),
            json.dumps(config, sort_keys=True),
            self.namespace,
            self.form_filter_threshold,
            self.form_layout,
        )
        poll_url_json = str(htmlsafe_json_dumps(poll_url))
        cached = _rendered_forms.get(key)
        if cached is not None:
            _rendered_forms.move_to_end(key)
        else:
            html = self._render_form_html(
                watch, catalog, policy, selected, {**config, "poll_url": _POLL_URL_SLOT}
            )
            parts = html.split(str(htmlsafe_json_dumps(_POLL_URL_SLOT)))
            if len(parts) != 2:  # the slot must be the config's poll_url and nothing else
                raise RuntimeError("options form: the poll URL slot is not in the form once")
            cached = _rendered_forms[key] = (Segment(parts[0]), Segment(parts[1]))
            _trim_rendered_forms()
        if composing_page.get() and self.form_layout == "lean":
            return FormParts((cached[0], Segment(poll_url_json), cached[1]))
        html = poll_url_json.join(part.text for part in cached)
        _trim_rendered_forms()  # the cached text now counts too
        return html

    def _form_config(self, policy: opts.Policy) -> dict[str, Any]:
        """Settings the form's script needs."""
        base_url = self.hub.base_url if self.hub is not None else "/hub/"
        user_path = ""
        if self.user is not None:  # a stand-in user (KubeSpawner's mock) may lack escaped_name
            user_path = getattr(self.user, "escaped_name", None) or quote(self.user.name, safe="@~")
        # The full layout re-reads its own spawn page; the lean one asks the form-state
        # endpoint what changed (see spawn_page.FormState).
        where = "spawn" if self.form_layout == "full" else STATE_PATH
        poll_url = url_path_join(base_url, where, user_path)
        if self.name:
            poll_url = url_path_join(poll_url, self.name)
        return {
            "layout": self.form_layout,
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
            "min_cpu": policy.min_cpu,
            "min_memory": policy.min_memory,
            "min_cpu_text": opts.format_cpu(policy.min_cpu),
            "min_memory_text": opts.format_memory(policy.min_memory),
        }

    def _render_form_html(
        self,
        watch: ImageStreamWatch,
        catalog: Catalog,
        policy: opts.Policy,
        selected: dict[str, Any],
        config: dict[str, Any],
        errors: dict[str, str] | None = None,
        notice: dict[str, Any] | None = None,
        error_source: str = "form",
    ) -> str:
        offered = policy.offered_images(catalog)
        images = [_image_view(i, self.namespace, selected["image"]) for i in offered]
        if selected["image"] is None:
            # No valid default (e.g. nothing ready yet): preselect the first usable card.
            first = next((i for i in images if i["usable"]), None)
            if first is not None:
                first["selected"] = True
        versions = {i.key: i.resource_version for i in catalog.images}
        lean = self.form_layout == "lean"
        cards = {
            view["key"]: _image_card(view, versions.get(view["key"], ""), self.namespace, lean)
            for view in images
        }
        namespaces = list(dict.fromkeys(i["namespace"] for i in images))
        groups = [(ns, [i for i in images if i["namespace"] == ns]) for ns in namespaces]
        if self.form_layout == "full":
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
        else:
            # The lean page's live updates ask for changes since this version; the tags
            # that are not ready are listed for scripts and tests (ready ones are the rest).
            state = {
                "version": watch.version,
                "stale": watch.stale,
                "tags": {
                    t["ref"]: {"phase": t["phase"], "message": t["message"]}
                    for i in images
                    for t in i["tags"]
                    if not t["ready"]
                },
            }
        env_rows = selected.get("env_rows") or [
            {"name": k, "value": v, "secret": False} for k, v in sorted(selected["env"].items())
        ] + [{"name": k, "value": "", "secret": True} for k in selected["secret_env_names"]]
        env_rows = env_rows or [{"name": "", "value": "", "secret": False}]
        errors = errors or {}
        error_items, env_error_row = error_summary(errors, policy, env_rows)
        return _templates.get_template("options_form.html").render(
            images=images,
            cards=cards,
            groups=groups,
            image_list=_lean_image_list(groups, cards) if self.form_layout == "lean" else None,
            policy=policy,
            sizes=[_size_view(s, selected, self._configured_resources()) for s in policy.sizes],
            selected=selected,
            stale=watch.stale,
            state=state,
            config=config,
            env_rows=env_rows,
            filter_threshold=self.form_filter_threshold,
            builder_url=self.builder_url,
            errors=errors,
            error_items=error_items,
            env_error_row=env_error_row,
            error_source=error_source,
            notice=notice,
        )

    def _configured_resources(self) -> dict[str, Any]:
        """The configured CPU and memory, which a size that leaves one out keeps."""
        names = ("cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit")
        configured = getattr(self, "_configured", {})
        return {n: configured.get(n, getattr(self, n, None)) for n in names}

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
            catalog_choice = chosen.image is not None and chosen.tag is not None
            return {
                "image": format_image_ref(chosen.image, chosen.tag, self.namespace)
                if catalog_choice
                else None,
                "size": chosen.size.name,
                "cpu": chosen.cpu,
                "memory": candidate.get("memory") if chosen.memory is not None else None,
                "gpus": chosen.gpus,
                "env": chosen.env,
                "secret_env_names": [n for n in secret_names if n not in chosen.env],
                "size_options": chosen.size_choices(),
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
            "size_options": {},
        }

    # -- live updates of the lean form (served by spawn_page.FormState) ---------------------

    def _visible_images(self, catalog: Catalog, policy: opts.Policy) -> list:
        return list(policy.offered_images(catalog))

    def form_changes(self, since: int) -> dict[str, Any]:
        """What changed for this user's open form since catalog version ``since``:
        ``{"version", "stale", "streams": {key: [[ref, phase, message], ...] or None}}`` for
        the streams this user may see (None: gone), or ``"reload": true`` when the changes
        are not known one by one (a relist since)."""
        watch = self.catalog_watch()
        out: dict[str, Any] = {"version": watch.version, "stale": watch.stale}
        keys = watch.changes_since(since)
        if keys is None:
            out["reload"] = True
            return out
        if not keys:
            return out
        policy = self.user_policy()
        index = _index(watch.catalog)
        streams: dict[str, Any] = {}
        for key in sorted(keys):
            image = index.get(key)
            if image is None or image.hidden:
                name = key.partition("/")[2]
                if policy.allows_image(SimpleNamespace(key=key, name=name)):
                    streams[key] = None
                continue
            if not policy.allows_image(image):
                continue
            streams[key] = [
                [format_image_ref(image, tag, self.namespace), str(tag.phase), tag.message]
                for tag in image.offered_tags()
            ]
        out["streams"] = streams
        return out

    def image_card_html(self, key: str, full: bool) -> dict[str, str] | None:
        """One card for the open form (a stream that appeared or changed shape; ``full``: with
        its version and package lists, opened on demand), and the key of the card it follows.
        None if this user may not see that stream."""
        watch = self.catalog_watch()
        policy = self.user_policy()
        visible = self._visible_images(watch.catalog, policy)
        position = next((n for n, i in enumerate(visible) if i.key == key), None)
        if position is None:
            return None
        image = visible[position]
        view = _image_view(image, self.namespace, None)
        html = _image_card(view, image.resource_version, self.namespace, lean=not full)
        return {"after": visible[position - 1].key if position else "", "html": str(html)}


_indexes: dict[int, tuple[Catalog, dict[str, Any]]] = {}


def _index(catalog: Catalog) -> dict[str, Any]:
    """The catalog's images by key (one dict per catalog object, the latest kept)."""
    found = _indexes.get(id(catalog))
    if found is None or found[0] is not catalog:
        _indexes.clear()
        found = _indexes[id(catalog)] = (catalog, {i.key: i for i in catalog.images})
    return found[1]


#: The lean form's first cards are parsed with the page; the others arrive in <noscript>
#: chunks of this many: a browser with scripting parses them as text (the script turns them
#: into cards a chunk at a time, after the page is usable), one without shows them as cards.
LEAN_FIRST_CARDS = 30
LEAN_CHUNK_CARDS = 100


def _lean_image_list(groups: list, cards: dict[str, Markup]) -> Markup:
    items: list[tuple[Markup, bool]] = []
    for namespace, group in groups:
        if len(groups) > 1:
            header = Markup(
                '<h3 class="h6 text-body-secondary mt-3 aicoe-group" data-namespace="{0}">{0}</h3>'
            ).format(namespace)
            items.append((header, False))
        items.extend((cards[image["key"]], image["selected"]) for image in group)
    first, rest = items[:LEAN_FIRST_CARDS], items[LEAN_FIRST_CARDS:]
    parts = [html for html, _ in first]
    for start in range(0, len(rest), LEAN_CHUNK_CARDS):
        chunk = rest[start : start + LEAN_CHUNK_CARDS]
        selected = any(sel for _, sel in chunk)
        parts.append(
            Markup('<noscript class="aicoe-more"{}>').format(
                Markup(' data-selected="1"') if selected else ""
            )
        )
        parts.extend(html for html, _ in chunk)
        parts.append(Markup("</noscript>"))
    return Markup("\n").join(parts)


def _trim_rendered_forms() -> None:
    total = sum(a.size + b.size for a, b in _rendered_forms.values())
    while len(_rendered_forms) > 1 and (
        len(_rendered_forms) > _RENDERED_FORMS_MAX or total > _RENDERED_FORMS_MAX_BYTES
    ):
        _, (a, b) = _rendered_forms.popitem(last=False)
        total -= a.size + b.size


def _image_card(
    view: dict[str, Any],
    resource_version: str,
    namespace: str,
    lean: bool = False,
) -> Markup:
    """The HTML of one image card, rendered once per stream version and choice: after a change
    to one stream only its card is rendered again."""
    key = (view["key"], resource_version, namespace, view["chosen"], view["selected"], lean)
    html = _rendered_cards.get(key)
    if html is None:
        html = _templates.get_template("_image_card.html").render(image=view, lean=lean)
        if lean:  # indentation is a third of a lean card
            html = _INDENT.sub("\n", html)
        html = Markup(html)
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
    packages = dict.fromkeys(
        p.name for t in image.offered_tags() for p in (*t.software, *t.python_dependencies)
    )
    search = " ".join(
        [
            image.display_name,
            image.name,
            image.description,
            *image.recommended_accelerators,
            *packages,
        ]
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
        "has_packages": any(t["software"] or t["python_dependencies"] for t in tags),
        "search": search.casefold(),
    }


def _size_view(
    size: opts.Size, selected: dict[str, Any], inherited: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A size with its resources in words (a resource it leaves out: the ``inherited``
    configured value), and its options with the chosen choice."""
    inherited = inherited or {}
    cpu_guarantee, cpu_limit, mem_guarantee, mem_limit = (
        getattr(size, n) if getattr(size, n) is not None else inherited.get(n)
        for n in ("cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit")
    )
    parts = []
    if cpu_guarantee is not None or mem_guarantee is not None:
        got = [
            opts.format_cpu(cpu_guarantee) if cpu_guarantee is not None else None,
            f"{opts.format_memory(mem_guarantee)} memory" if mem_guarantee is not None else None,
        ]
        parts.append("Guaranteed " + " and ".join(p for p in got if p))
    if cpu_limit is not None or mem_limit is not None:
        up = [
            opts.format_cpu(cpu_limit) if cpu_limit is not None else None,
            f"{opts.format_memory(mem_limit)} memory" if mem_limit is not None else None,
        ]
        parts.append("can use up to " + " and ".join(p for p in up if p))
    words = ", ".join(parts)
    chosen = selected.get("size_options") or {} if selected.get("size") == size.name else {}
    options = []
    for option in size.options:
        typed = chosen.get(f"{option.name}{opts.UNLISTED_SUFFIX}") if option.unlisted else None
        default = option.default_choice()
        options.append(
            {
                "name": option.name,
                "display_name": option.display_name,
                "choices": [
                    {"name": c.name, "display_name": c.display_name} for c in option.choices
                ],
                "chosen": chosen.get(option.name) or (default.name if default else ""),
                "unlisted": option.unlisted,
                "typed": typed if isinstance(typed, str) else "",
            }
        )
    return {
        "name": size.name,
        # KubeSpawner's field for profile_list sizes: the form then posts its flat shape.
        "field": "profile" if size.profile else "size",
        "display_name": size.display_name,
        "description": size.description,
        "words": (words[:1].upper() + words[1:]) if words else "No fixed resources",
        "own_image": size.brings_image,
        "image": size.image,
        "options": options,
    }


def _selection_from_entries(
    entries: dict[str, list[str]], policy: opts.Policy, fallback: dict[str, Any]
) -> dict[str, Any]:
    """What the user entered (form post or link), to show it again as it was typed; missing or
    unusable entries take ``fallback``. Secret values are never shown again."""

    def first(key: str) -> str:
        values = entries.get(key) or [""]
        return str(values[0]).strip()

    size = first("size") or first("profile")
    if policy.size(size) is None:
        size = fallback["size"]
    gpus = first("gpus")
    prefix = f"profile-option-{size}--"
    rows = [
        {"name": n, "value": v, "secret": False}
        for n, v in zip(entries.get("env_name", []), entries.get("env_value", []), strict=False)
        if n or v
    ] + [{"name": n, "value": "", "secret": True} for n in entries.get("secret_env_name", []) if n]
    return {
        "image": first("image") or fallback["image"],
        "size": size,
        "cpu": first("cpu") or None,
        "memory": first("memory") or None,
        "gpus": int(gpus) if gpus.isascii() and gpus.isdigit() and len(gpus) < 4 else 0,
        "env": {},
        "secret_env_names": [],
        "env_rows": rows,
        "size_options": {
            k[len(prefix) :]: v[0] for k, v in entries.items() if k.startswith(prefix) and v
        },
    }
