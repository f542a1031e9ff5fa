"""What the builder says to GitHub, without I/O (pure): AICoE-CI's "Deliver Container Image"
issue, who may ask for a build, commit statuses, comments and links.

Comments are Markdown the builder writes: the image name and digest are the builder's own;
anything that may carry user text (a build's failure reason, a requested tag) goes into a
fenced code block, truncated, with every backtick run shortened so the fence cannot be closed
from inside."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode

#: The title of AICoE-CI's "Deliver Container Image" issue template.
ISSUE_TITLE = "Deliver Container Image"
#: The template's placeholder, left as it is by someone who did not fill the form in.
PLACEHOLDER_TAG = "x.y.z"
#: Collaborator permissions that can push (GitHub's ``permission``: admin, write, read, none;
#: ``role_name`` adds maintain and triage).
PUSH_PERMISSIONS = frozenset({"admin", "maintain", "write"})
REASON_LIMIT = 1500  # characters of a failure reason quoted in a comment
DESCRIPTION_LIMIT = 140  # GitHub truncates a commit status description beyond this
STATUS_CONTEXT = "aicoe-image-builder"
MARKER = "<!-- aicoe-image-builder:{key} -->"  # marks our comments: one per key, ever

_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")  # a user's or organization's login
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_TAG_LINE = re.compile(r"^[ \t>*_-]*tag[ \t*_]*:[ \t*_`]*([^\s`*]+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class IssueRequest:
    """A "Deliver Container Image" issue: the tag asked for, or why none was understood."""

    tag: str = ""
    problem: str = ""  # set when the issue is the template's but names no usable tag


def is_delivery_issue(title: object) -> bool:
    """True for an issue titled as AICoE-CI's template titles it (case and spaces aside)."""
    return isinstance(title, str) and " ".join(title.split()).lower().startswith(
        ISSUE_TITLE.lower()
    )


def issue_request(title: object, body: object) -> IssueRequest | None:
    """The request of a "Deliver Container Image" issue (``Tag: x.y.z`` in its body), None
    for any other issue."""
    if not is_delivery_issue(title):
        return None
    found = _TAG_LINE.search(body) if isinstance(body, str) else None
    if found is None:
        return IssueRequest(problem="the issue has no `Tag: <git tag>` line")
    tag = found.group(1)
    if tag == PLACEHOLDER_TAG:
        return IssueRequest(problem=f"the issue still says `Tag: {PLACEHOLDER_TAG}`")
    return IssueRequest(tag=tag)


def can_push(answer: object) -> bool:
    """Whether GitHub's collaborator permission answer
    (``GET /repos/{owner}/{repo}/collaborators/{username}/permission``) allows pushing."""
    if not isinstance(answer, dict):
        return False
    names = {answer.get("permission"), answer.get("role_name")}
    user = answer.get("user")
    if isinstance(user, dict) and isinstance(user.get("permissions"), dict):
        perms = user["permissions"]
        names |= {k for k in ("admin", "maintain") if perms.get(k) is True}
        if perms.get("push") is True:
            names.add("write")
    return bool(names & PUSH_PERMISSIONS)


def owner_and_name(full_name: object) -> tuple[str, str] | None:
    """``("org", "repo")`` of a payload's ``repository.full_name``, None if it is not one."""
    if not isinstance(full_name, str):
        return None
    owner, sep, name = full_name.partition("/")
    if not (sep and _OWNER.fullmatch(owner) and _NAME.fullmatch(name)) or name in (".", ".."):
        return None
    return owner, name


def launch_link(public_url: str, prefix: str, repo: str, ref: str) -> str:
    """The builder's launch link for ``repo`` at ``ref`` (shows the build, then offers the
    spawn page with its image); "" without a public URL."""
    if not public_url:
        return ""
    base = public_url.rstrip("/") + "/" + prefix.strip("/")
    return f"{base.rstrip('/')}/launch?{urlencode({'repo': repo, 'ref': ref})}"


def commit_status(phase: str, image: str, message: str = "") -> tuple[str, str]:
    """(GitHub status ``state``, ``description``) for a build in ``phase``."""
    if phase == "ready":
        state, text = "success", f"built {image}"
    elif phase == "failed":
        state, text = "failure", f"the build of {image} failed" + (f": {message}" * bool(message))
    elif phase == "cancelled":
        state, text = "error", f"the build of {image} was cancelled"
    elif phase == "building":
        state, text = "pending", f"building {image}"
    else:
        state, text = "pending", f"{image} is waiting to be built"
    text = " ".join(text.split())
    if len(text) > DESCRIPTION_LIMIT:
        text = text[: DESCRIPTION_LIMIT - 1] + "…"
    return state, text


def status_context(stream: str, tag: str) -> str:
    """One status per image (a repository with ``.aicoe-ci.yaml`` overlays builds several)."""
    return f"{STATUS_CONTEXT}/{stream}:{tag}"


def code_block(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` as a fenced code block GitHub renders verbatim: truncated, no fence inside."""
    text = text if len(text) <= limit else text[:limit] + "\n…"
    text = re.sub(r"`{3,}", "``", text)
    return f"```text\n{text}\n```"


def marked(key: str, body: str) -> str:
    return f"{MARKER.format(key=key)}\n{body}"


def has_marker(comments: list, key: str) -> bool:
    """True when one of the issue's ``comments`` is ours for ``key``."""
    mark = MARKER.format(key=key)
    return any(isinstance(c, dict) and mark in str(c.get("body") or "") for c in comments)


@dataclass(frozen=True)
class Built:
    """One finished image of an issue's request, as the comment shows it."""

    image: str  # namespace/stream:tag
    pull: str  # the registry reference, at the digest when there is one
    digest: str
    phase: str
    message: str = ""


def delivered_comment(login: str, tag: str, images: list[Built], launch: str) -> str:
    """The comment on a delivered issue (every image built); the issue is then closed."""
    lines = [f"@{login}: the image of tag `{_safe_tag(tag)}` is delivered.", ""]
    for b in images:
        lines += [f"- **{b.image}**", f"  - image: `{b.pull}`", f"  - digest: `{b.digest}`"]
    if launch:
        lines += ["", f"Launch it: {launch}"]
    return "\n".join(lines)


def failed_comment(login: str, tag: str, images: list[Built]) -> str:
    """The comment on an issue whose build failed (left open: fix, then open a new one)."""
    lines = [f"@{login}: the image of tag `{_safe_tag(tag)}` could not be built.", ""]
    for b in images:
        lines.append(f"- **{b.image}**: {b.phase}")
        if b.message:
            lines.append("")
            lines.append(code_block(b.message))
    lines += ["", "This issue stays open: fix the cause, then open a new one."]
    return "\n".join(lines)


def refused_comment(login: str, reason: str) -> str:
    """The comment on an issue the builder did not build for (the reason in a code block)."""
    return f"@{login}: thank you for the request. No image was built:\n\n{code_block(reason)}\n"


def not_allowed_comment(login: str) -> str:
    return (
        f"@{login}: thank you for the request. Only people who can push to this repository "
        "can ask for an image to be built and delivered, so nothing was built. A maintainer "
        "can open the issue instead, or publish a release."
    )


def _safe_tag(tag: str) -> str:
    return tag.replace("`", "")[:200]


def at_digest(reference: str, digest: str) -> str:
    """``registry/org/name@sha256:…`` of the pushed ``registry/org/name:tag``."""
    if not digest:
        return reference
    head, _, last = reference.rpartition("/")
    name = last.split("@")[0].split(":")[0]
    return f"{head}/{name}@{digest}" if head else f"{name}@{digest}"
