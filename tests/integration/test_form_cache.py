"""The options form's render cache, in-process against the real API server: a rendering is
shared by every user with the same policy and choice, whatever the number of users."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from harness.hub import in_process_spawner
from harness.kube import create_imagestream
from kubernetes_asyncio import client
from kubernetes_asyncio.config import kube_config

from aicoe_spawner import form_view as spawner_module
from aicoe_spawner.spawner import AICoESpawner
from aicoe_spawner.watch import ImageStreamWatch

A = "opendatahub.io/"
SELECTOR = "opendatahub.io/notebook-image=true"


def form_config(form: str) -> dict:
    found = re.search(r'<script type="application/json" id="aicoe-config">(.*?)</script>', form)
    assert found, form[:2000]
    return json.loads(found.group(1))


# Where each layout's live updates come from: the form-state endpoint (lean) or the page (full).
POLL_PATHS = {"lean": "/hub/aicoe/form-state/", "full": "/hub/spawn/"}


@pytest.mark.parametrize("layout", sorted(POLL_PATHS))
async def test_many_users_share_one_rendering_with_their_own_poll_url(
    control_plane, kube, namespace, monkeypatch, layout
):
    # KubeSpawner loads the default kubeconfig when a spawner is constructed.
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig))
    await create_imagestream(
        kube, namespace, "minimal", {"1": {f"{A}workbench-image-recommended": "true"}}
    )
    watch = ImageStreamWatch.shared((namespace,), SELECTOR, lambda: client.CustomObjectsApi(kube))
    renders = []
    real_render = AICoESpawner._render_form_html

    def counted_render(self, *args, **kwargs):
        renders.append(self.user.name)
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(AICoESpawner, "_render_form_html", counted_render)
    try:
        assert await watch.wait_synced(30)
        # More users than the cache has entries, each loading the page twice.
        users = [f"user-{i}" for i in range(spawner_module._RENDERED_FORMS_MAX + 16)]
        first_forms = {}
        for name in users * 2:
            spawner = in_process_spawner(AICoESpawner, name, namespace, form_layout=layout)
            form = await spawner.get_options_form()
            # The page polls its own user's URL, never another user's.
            assert form_config(form)["poll_url"] == f"{POLL_PATHS[layout]}{name}"
            first_forms.setdefault(name, form)
            assert form == first_forms[name]
        assert renders == [users[0]]  # one rendering for all of them
        # A user with a hostile name gets their own URL, escaped inside the JSON.
        hostile = 'x</script><script>alert(1)</script>"'
        form = await in_process_spawner(
            AICoESpawner, hostile, namespace, form_layout=layout
        ).get_options_form()
        assert "<script>alert(1)" not in form
        assert form_config(form)["poll_url"] == POLL_PATHS[layout] + quote(hostile, safe="@~")
        assert len(renders) == 1
    finally:
        await ImageStreamWatch.stop_all()
