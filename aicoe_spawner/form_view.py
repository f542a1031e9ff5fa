"""The options form: the catalog, sizes and the user's choices rendered as HTML.

Rendered from the in-memory catalog (no API request). The same view serves the plain form, a
``/hub/spawn?…`` link (the link's choice preselected and described, nothing started), a rejected
choice (the user's entries kept, the message by its field) and a link opened while the user's
server runs with other options.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

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
_rendered_forms: OrderedDict[tuple, tuple[str, str]] = OrderedDict()
_RENDERED_FORMS_MAX = 64
# Stands for the poll URL in a cached rendering (as the JSON string the template writes).
_POLL_URL_SLOT = "aicoe-poll-url-slot-7c1f0b"
# Rendered image cards by (stream, resourceVersion, choice); a few per stream.
_rendered_cards: OrderedDict[tuple, Markup] = OrderedDict()
_RENDERED_CARDS_MAX = 50_000

_templates.filters["cpu"] = opts.format_cpu
_templates.filters["memory"] = opts.format_memory


@dataclass
class FormContext:
    """What a spawn page shows besides the catalog: the user's entries with the message of a
    rejected choice, or a link's choice, or a notice that the user's server already runs."""

    entries: dict[str, list[str]] | None = None
    error: opts.OptionsError | None = None
    notice: dict[str, Any] | None = None


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
    """``{slot: message}`` for the form: the message goes next to the field it is about."""
    if error is None:
        return {}
    root, _, name = error.field.partition(".")
    slot = _ERROR_SLOTS.get(root, "form")
    if slot == "form":
        return {"form": str(error)}
    return {slot: f"{name}: {error.reason}" if name else error.reason, "env_name": name}


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
            return self._render_form_html(
                watch,
                catalog,
                policy,
                selected,
                self._form_config(policy),
                errors=error_slots(context.error),
                notice=context.notice,
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
        )
        poll_url_json = str(htmlsafe_json_dumps(poll_url))
        cached = _rendered_forms.get(key)
        if cached is not None:
            _rendered_forms.move_to_end(key)
            return poll_url_json.join(cached)
        html = self._render_form_html(
            watch, catalog, policy, selected, {**config, "poll_url": _POLL_URL_SLOT}
        )
        parts = html.split(str(htmlsafe_json_dumps(_POLL_URL_SLOT)))
        if len(parts) != 2:  # the slot must be the config's poll_url and nothing else
            raise RuntimeError("options form: the poll URL slot is not in the form exactly once")
        _rendered_forms[key] = (parts[0], parts[1])
        while len(_rendered_forms) > _RENDERED_FORMS_MAX:
            _rendered_forms.popitem(last=False)
        return poll_url_json.join(parts)

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
        env_rows = selected.get("env_rows") or [
            {"name": k, "value": v, "secret": False} for k, v in sorted(selected["env"].items())
        ] + [{"name": k, "value": "", "secret": True} for k in selected["secret_env_names"]]
        errors = errors or {}
        return _templates.get_template("options_form.html").render(
            images=images,
            cards=cards,
            groups=groups,
            policy=policy,
            sizes=[_size_view(s, selected) for s in policy.sizes],
            selected=selected,
            stale=watch.stale,
            state=state,
            config=config,
            env_rows=env_rows,
            filter_threshold=self.form_filter_threshold,
            builder_url=self.builder_url,
            errors=errors,
            notice=notice,
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
                "size_options": {name: c.name for name, c in chosen.choices.items()},
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


def _size_view(size: opts.Size, selected: dict[str, Any]) -> dict[str, Any]:
    """A size with its resources in words, and its options with the chosen choice."""
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
    chosen = selected.get("size_options") or {} if selected.get("size") == size.name else {}
    return {
        "name": size.name,
        "display_name": size.display_name,
        "description": size.description,
        "words": (words[:1].upper() + words[1:]) if words else "No fixed resources",
        "options": [
            {
                "name": option.name,
                "display_name": option.display_name,
                "choices": [
                    {"name": c.name, "display_name": c.display_name} for c in option.choices
                ],
                "chosen": chosen.get(option.name) or option.default_choice().name,
            }
            for option in size.options
        ],
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
