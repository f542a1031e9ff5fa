"""Secret environment variables: one Kubernetes Secret per server, owned by its pod.

The values go from the spawn request straight into the Secret; the pod reads them through
``valueFrom.secretKeyRef``. They are never in the spawner's ``user_options``, the pod spec, the
hub database, an API response, an event or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.users import UserServerAPIHandler
from kubernetes_asyncio.client.rest import ApiException
from tornado import web

from .pod import ANNOTATION_PREFIX

SECRET_ENV_COMPONENT = "singleuser-secret-env"
MANAGED_BY = "aicoe-spawner"
# A dot: KubeSpawner's slug schemes (names of pods, PVCs and internal-SSL Secrets) produce
# only [a-z0-9-], so no other object of the hub can have this name.
SECRET_ENV_SUFFIX = ".secret-env"


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


class ServerRequestBody(APIHandler):
    """Reads the JSON body of the server API (``/hub/api/users/{name}/server`` and
    ``…/servers/{server}``) so that no secret env value reaches a log call:

    - a body that is not JSON is refused with 400 and logged by its size only (JupyterHub's
      own reader logs the whole body, at debug level);
    - PUT and PATCH only store ``user_options``, which never keep secret values
      (:func:`without_secret_values`): the values are dropped as the body is read, before
      JupyterHub's PATCH logs the options it was given ("Setting user_options on … {…}").

    POST (a spawn) keeps them: the spawner moves them out of its ``user_options`` as they are
    set. Nothing here reads log messages; the work is one ``json.loads`` and a dict copy.
    """

    def get_json_body(self) -> Any:
        if not self.request.body:
            return None
        try:
            body = json.loads(self.request.body.strip().decode("utf-8", "replace"))
        except Exception as e:  # what JupyterHub's reader catches; RecursionError included
            self.log.warning(
                "Refused a %s body of %d bytes that is not JSON: %s",
                self.request.method,
                len(self.request.body),
                type(e).__name__,
            )
            raise web.HTTPError(400, "Invalid JSON in body of request") from None
        if self.request.method not in ("PUT", "PATCH") or not isinstance(body, dict):
            return body
        if isinstance(body.get("user_options"), dict):
            return {**body, "user_options": without_secret_values(body["user_options"])}
        if self.request.method == "PUT" and not {"display_name", "user_options"} & body.keys():
            return without_secret_values(body)  # the old form: the body is the options
        return body


class ServerAPIHandler(UserServerAPIHandler, ServerRequestBody):
    """JupyterHub's server API with :class:`ServerRequestBody`'s reader.

    The reader sits after ``UserServerAPIHandler`` in the MRO, so both its own
    ``get_json_body()`` (PATCH) and the ``super().get_json_body()`` of its
    ``get_server_json_body()`` (POST, PUT) use it.
    """


class SecretEnv:
    """Mixin for AICoESpawner: the per-server Secret of secret env vars."""

    # Values between apply_user_options and the Secret's creation only.
    _secret_env: dict[str, str]
    _secret_env_names: list[str]
    # Name of this server's Secret while it exists (kept in the spawner state across hub
    # restarts), so that spawns without secret env vars make no extra API requests.
    _secret_env_secret: str | None = None
    _starting = False

    @property
    def secret_env_name(self) -> str:
        """Name of the Secret that holds this server's secret env values."""
        return f"{self.pod_name}{SECRET_ENV_SUFFIX}"

    def secret_env_refs(self) -> dict[str, Any]:
        return {
            name: {"valueFrom": {"secretKeyRef": {"name": self.secret_env_name, "key": name}}}
            for name in self._secret_env_names
        }

    def start(self):
        self._start_future = asyncio.ensure_future(self._start_with_secret_env())
        return self._start_future

    async def _start_with_secret_env(self):
        if self._secret_env_names:
            await self._create_secret_env()
        self._starting = True
        try:
            # a little before JupyterHub's own start_timeout, whose TimeoutError has no message:
            # this one names the cluster's reason (e.g. the scheduler's)
            return await asyncio.wait_for(self._start(), timeout=self.start_timeout * 0.95)
        except TimeoutError as e:
            await self._delete_secret_env()
            message = str(e) or f"the server did not start within {self.start_timeout:g} seconds"
            reason = self._last_warning()
            raise TimeoutError(f"{message.rstrip('.!')}. {reason}" if reason else message) from e
        except BaseException:
            await self._delete_secret_env()
            raise
        finally:
            self._starting = False

    def _last_warning(self) -> str:
        """The cluster's last warning about this pod (e.g. the scheduler's "0/1 nodes are
        available: 1 Insufficient nvidia.com/gpu."), for the user's spawn failure message."""
        warnings = [e for e in self.events if e.get("type") == "Warning" and e.get("message")]
        return f"Last event: {warnings[-1]['message']}" if warnings else ""

    async def stop(self, now=False):
        try:
            await super().stop(now)
        finally:
            # KubeSpawner's start() stops a conflicting old pod before creating the new one:
            # the new Secret stays (a failed start deletes it itself).
            if not self._starting:
                await self._delete_secret_env()

    def get_state(self):
        state = super().get_state()
        if self._secret_env_secret:
            state["secret_env_secret"] = self._secret_env_secret
        return state

    def load_state(self, state):
        super().load_state(state)
        name = state.get("secret_env_secret")
        self._secret_env_secret = name if isinstance(name, str) and name else None

    def clear_state(self):
        super().clear_state()
        self._secret_env_secret = None

    # -- the Secret --------------------------------------------------------------------------

    def _secret_env_metadata(self) -> dict[str, Any]:
        return {
            "name": self.secret_env_name,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "component": SECRET_ENV_COMPONENT,
                "hub.jupyter.org/servername": self._expand_user_properties("{servername}"),
            },
            "annotations": {
                "hub.jupyter.org/username": self.user.name,
                f"{ANNOTATION_PREFIX}pod": self.pod_name,
            },
        }

    def _is_ours(self, secret) -> bool:
        """Whether an existing Secret is this server's: our labels and this user and pod."""
        meta = secret.metadata
        labels, annotations = meta.labels or {}, meta.annotations or {}
        return (
            labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
            and labels.get("component") == SECRET_ENV_COMPONENT
            and annotations.get("hub.jupyter.org/username") == self.user.name
            and annotations.get(f"{ANNOTATION_PREFIX}pod") == self.pod_name
        )

    async def _k8s(self, call):
        return await asyncio.wait_for(call, self.k8s_api_request_timeout)

    async def _create_secret_env(self) -> None:
        values = dict(self._secret_env)
        name = self.secret_env_name
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": self._secret_env_metadata(),
            "data": {
                key: base64.b64encode(values.get(key, "").encode("utf-8")).decode("ascii")
                for key in self._secret_env_names
            },
        }
        try:
            try:
                await self._k8s(self.api.create_namespaced_secret(self.namespace, body))
            except ApiException as e:
                if e.status != 409:
                    raise
                # Left over from a spawn whose stop did not finish: replace it, if it is ours.
                if not await self._delete_secret_env(name):
                    raise web.HTTPError(
                        500,
                        f"secret_env: a Secret named {name} exists and was not made for this "
                        "server; it was left alone. Ask the hub admin to remove it.",
                    ) from None
                await self._k8s(self.api.create_namespaced_secret(self.namespace, body))
        except ApiException as e:
            # Never log the body: it holds the values.
            self.log.error(
                "Could not create Secret %s/%s for %s: %s %s",
                self.namespace,
                name,
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
        self._secret_env_secret = name
        self.log.info(
            "Stored secret env %s for %s in Secret %s",
            ", ".join(self._secret_env_names),
            self._log_name,
            name,
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
            await self._k8s(
                self.api.patch_namespaced_secret(self.secret_env_name, self.namespace, patch)
            )
        except (ApiException, TimeoutError) as e:
            # Not fatal: stop() deletes the Secret as well.
            self.log.warning("Could not set the owner of Secret %s: %s", self.secret_env_name, e)

    async def _delete_secret_env(self, name: str | None = None) -> bool:
        """Delete this server's Secret if it exists and is ours; True if none of ours is left.

        Without ``name``, the Secret recorded in the state (none: nothing to do).
        """
        name = name or self._secret_env_secret
        if not name:
            return True
        try:
            secret = await self._k8s(self.api.read_namespaced_secret(name, self.namespace))
            if not self._is_ours(secret):
                self.log.error(
                    "Secret %s/%s is not the secret env of %s: not deleting it",
                    self.namespace,
                    name,
                    self._log_name,
                )
                if name == self._secret_env_secret:
                    self._secret_env_secret = None
                return False
            # Exactly the object we checked, not one created under the same name since.
            await self._k8s(
                self.api.delete_namespaced_secret(
                    name, self.namespace, body={"preconditions": {"uid": secret.metadata.uid}}
                )
            )
        except ApiException as e:
            if e.status == 404:
                if name == self._secret_env_secret:
                    self._secret_env_secret = None
                return True
            self.log.warning("Could not delete Secret %s: %s %s", name, e.status, e.reason)
            return False
        except TimeoutError:
            self.log.warning("Timed out deleting Secret %s", name)
            return False
        if name == self._secret_env_secret:
            self._secret_env_secret = None
        self.log.info("Deleted Secret %s", name)
        return True

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
