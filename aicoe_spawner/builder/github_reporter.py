"""The builder reporting builds back to GitHub (I/O): :class:`GitHubReporter`, the build
observer that sets a commit status per image (pending → success/failure/error, linked to the
build's launch link) and, for an issue-triggered build, posts one comment with the images,
their digests and the launch link, and closes the issue (a failure comments the reason and
leaves it open), through :class:`~.github.GitHub`.

What to report about a build survives restarts and is shared by replicas: the webhook handler
writes a *report* ConfigMap (``imgbuild-github-<hash>``, labelled with its builds' ids) naming
the repository, commit, installation and issue (:class:`Report`, :class:`ReportStore`). The
service calls :meth:`GitHubReporter.build_changed` on the one replica whose status write
changed a build's phase. The comment is claimed in the ConfigMap (a resourceVersion
precondition) before it is posted, and every comment carries a hidden marker that is looked for
before posting again, so an issue never gets a second one. Tokens never reach a log or a
record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from . import github_report as report
from .github import GitHub, RetryingGitHubAPI
from .store import TERMINAL, Build
from .vocabulary import MANAGED_BY, L

log = logging.getLogger("aicoe_spawner.builder.github")

REPORT_LABEL = f"{L}github-build"  # one per build id the report covers: <id>=true
REPORT_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{L}record=github-report"
ANSWER_LABEL = f"{L}github-answer"  # an issue's report: waiting (to be answered) | done
SWEEP_INTERVAL = 300.0  # seconds between looks for issues left unanswered (GitHub was down)


@dataclass(frozen=True)
class Report:
    """Where one webhook's builds are reported: the repository, the built commit, the App's
    installation (0: the token's, or looked up), the issue (0: none) and its opener, the tag,
    the repository's clone URL (for the launch link), the builds, and whether the issue's
    comment was claimed."""

    owner: str
    repo: str
    sha: str
    builds: tuple[str, ...]
    clone_url: str
    ref: str
    installation: int = 0
    issue: int = 0
    login: str = ""
    commented: bool = False
    name: str = ""
    resource_version: str = ""

    def key(self) -> str:
        return hashlib.sha256(
            f"{self.owner}/{self.repo}#{self.issue}@{self.sha}:{','.join(self.builds)}".encode()
        ).hexdigest()[:32]

    def data(self) -> dict[str, str]:
        fields = {
            k: getattr(self, k)
            for k in ("owner", "repo", "sha", "clone_url", "ref", "installation", "issue", "login")
        }
        return {
            "report": json.dumps({**fields, "builds": list(self.builds)}, sort_keys=True),
            "commented": "true" if self.commented else "false",
        }

    @classmethod
    def of(cls, cm: Any) -> Report | None:
        try:
            data = cm.data or {}
            fields = json.loads(data["report"])
            return cls(
                **{**fields, "builds": tuple(fields["builds"])},
                commented=data.get("commented") == "true",
                name=cm.metadata.name,
                resource_version=cm.metadata.resource_version,
            )
        except (KeyError, TypeError, ValueError):
            return None


class ReportStore:
    """Reports as ConfigMaps in the builder's namespace, owned by the first build's record
    (they go with it)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    async def create(self, r: Report, owner: Build | None) -> Report:
        name = f"imgbuild-github-{r.key()}"
        labels = {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            f"{L}record": "github-report",
            **{f"{REPORT_LABEL}-{b}": "true" for b in r.builds},
        }
        if r.issue:
            labels[ANSWER_LABEL] = "done" if r.commented else "waiting"
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owner is not None and owner.uid:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "aicoe-spawner.io/v1",
                    "kind": "ImageBuild",
                    "name": f"imgbuild-{owner.id}",
                    "uid": owner.uid,
                }
            ]
        try:
            cm = await self.core.create_namespaced_config_map(
                self.namespace, {"metadata": meta, "data": r.data()}
            )
        except ApiException as e:
            if e.status != 409:
                raise
            cm = await self.core.read_namespaced_config_map(name, self.namespace)
        return Report.of(cm) or r

    async def of_build(self, build_id: str) -> list[Report]:
        answer = await self.core.list_namespaced_config_map(
            self.namespace, label_selector=f"{REPORT_SELECTOR},{REPORT_LABEL}-{build_id}=true"
        )
        return [r for r in (Report.of(cm) for cm in answer.items) if r is not None]

    async def claim_comment(self, r: Report) -> bool:
        """Mark the report's comment as ours to post; False when another replica has."""
        if r.commented:
            return False
        body = {
            "metadata": {"resourceVersion": r.resource_version, "labels": {ANSWER_LABEL: "done"}},
            "data": {"commented": "true"},
        }
        try:
            await self.core.patch_namespaced_config_map(r.name, self.namespace, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def release_comment(self, r: Report) -> None:
        """The comment was not posted: the report waits for the next try."""
        body = {"metadata": {"labels": {ANSWER_LABEL: "waiting"}}, "data": {"commented": "false"}}
        await self.core.patch_namespaced_config_map(r.name, self.namespace, body)

    async def waiting(self) -> list[Report]:
        """The issues' reports not answered yet."""
        answer = await self.core.list_namespaced_config_map(
            self.namespace, label_selector=f"{REPORT_SELECTOR},{ANSWER_LABEL}=waiting"
        )
        return [r for r in (Report.of(cm) for cm in answer.items) if r is not None]


class GitHubReporter:
    """The build observer that reports to GitHub (see the module's docstring). ``records``
    reads a build's current record."""

    def __init__(
        self,
        github: GitHub,
        reports: ReportStore,
        records: Callable[[str], Awaitable[Build | None]],
    ) -> None:
        self.github = github
        self.reports = reports
        self.records = records
        self.config = github.config
        self._task: asyncio.Task | None = None

    def launch(self, r: Report) -> str:
        return report.launch_link(self.config.public_url, self.config.prefix, r.clone_url, r.ref)

    async def build_changed(self, build: Build, previous: str) -> None:
        """Called once per phase change of ``build`` (by the replica that wrote it)."""
        for r in await self.reports.of_build(build.id):
            await self.report(r, build)

    async def report(self, r: Report, build: Build | None = None) -> None:
        """Tell GitHub where ``r``'s builds are: each one's commit status (``build``'s only,
        when given), then, for an issue whose builds all ended, the comment and the close."""
        gh = await self.github.for_repo(r.owner, r.repo, r.installation)
        builds = [build] if build is not None else await self._builds(r)
        for b in builds:
            if b is None:
                continue
            state, description = report.commit_status(b.phase, b.spec.image, b.message)
            body = {
                "state": state,
                "description": description,
                "context": report.status_context(b.spec.stream, b.spec.tag),
            }
            if self.launch(r):
                body["target_url"] = self.launch(r)
            await self.github.set_status(gh, r.owner, r.repo, r.sha, body)
        if r.issue and (build is None or build.phase in TERMINAL):
            await self._answer_issue(gh, r)

    async def sweep(self) -> int:
        """Answer the issues whose builds all ended but whose answer could not be posted
        (GitHub was down then); the number answered now."""
        answered = 0
        for r in await self.reports.waiting():
            try:
                gh = await self.github.for_repo(r.owner, r.repo, r.installation)
                answered += bool(await self._answer_issue(gh, r))
            except Exception as e:
                log.warning("answering %s/%s#%d: %s", r.owner, r.repo, r.issue, _safe_error(e))
        return answered

    def start(self, interval: float = SWEEP_INTERVAL) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(interval), name="github-sweep")

    async def run(self, interval: float = SWEEP_INTERVAL) -> None:
        """:meth:`sweep` every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception as e:  # the API server, say: the next sweep tries again
                log.warning("GitHub sweep: %s", _safe_error(e))

    async def _builds(self, r: Report) -> list[Build | None]:
        return [await self.records(b) for b in r.builds]

    async def _answer_issue(self, gh: RetryingGitHubAPI, r: Report) -> bool:
        """Comment (and close) once every build of the issue ended; True if this did."""
        builds = await self._builds(r)
        if any(b is None or b.phase not in TERMINAL for b in builds):
            return False  # another image is still building: its end answers
        if not await self.reports.claim_comment(r):
            return False
        shown = [
            report.Built(
                image=b.spec.image,
                pull=report.at_digest(b.spec.output_image, b.digest),
                digest=b.digest,
                phase=b.phase,
                message=b.message,
            )
            for b in builds
            if b is not None
        ]
        delivered = all(b.phase == "ready" for b in shown)
        if delivered:
            text = report.delivered_comment(r.login, r.ref, shown, self.launch(r))
        else:
            text = report.failed_comment(r.login, r.ref, shown)
        try:
            await self.github.comment_once(gh, r.owner, r.repo, r.issue, r.key(), text)
            if delivered:
                await self.github.close_issue(gh, r.owner, r.repo, r.issue)
        except BaseException:
            await self.reports.release_comment(r)  # the sweep tries again
            raise
        return True


def _safe_error(e: BaseException) -> str:
    """An error as logged: its type and GitHub's status, never a request's headers."""
    status = getattr(e, "status_code", None)
    text = str(e)[:200]
    return f"{type(e).__name__} {int(status) if status else ''} {text}".strip()
