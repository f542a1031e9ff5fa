"""The source-to-image strategy as a Dockerfile, equivalent to ``s2i build --as-dockerfile``
(pure). s2i itself is not buildable on this machine (no source-to-image module in the Go
mirror), so the builder generates the same Dockerfile s2i would: the sources copied to
/tmp/src owned by 1001, the repository's ``.s2i/bin/assemble`` if present else the builder
image's assemble script (``io.openshift.s2i.scripts-url``, resolved by the build script and
substituted for ``@S2I_SCRIPTS@``), and ``run`` as the command.
"""

from __future__ import annotations

SCRIPTS_PLACEHOLDER = "@S2I_SCRIPTS@"
DEFAULT_SCRIPTS = "/usr/libexec/s2i"


def scripts_dir(scripts_url: str | None) -> str:
    """``image:///usr/libexec/s2i`` -> ``/usr/libexec/s2i`` (default when unset/other)."""
    if scripts_url and scripts_url.startswith("image://"):
        path = scripts_url[len("image://") :]
        if path.startswith("/") and all(c.isalnum() or c in "/._-" for c in path):
            return path.rstrip("/") or DEFAULT_SCRIPTS
    return DEFAULT_SCRIPTS


def s2i_dockerfile(
    base_image: str, labels: dict[str, str], env: tuple[tuple[str, str], ...] = ()
) -> str:
    """The Dockerfile template (with ``@S2I_SCRIPTS@``) for building ``base_image`` + sources;
    ``env``: variables of the assemble step and the image (as s2i's ``--env``)."""
    label_lines = "".join(
        f'LABEL "{k}"="{v.replace(chr(34), "")}"\n' for k, v in sorted(labels.items())
    )
    label_lines += "".join(f'ENV {k}="{v.replace(chr(34), "")}"\n' for k, v in env)
    s = SCRIPTS_PLACEHOLDER
    return (
        f"FROM {base_image}\n"
        f"{label_lines}"
        'LABEL "io.openshift.s2i.build.image"="' + base_image + '"\n'
        "USER root\n"
        "COPY . /tmp/src\n"
        "RUN chown -R 1001:0 /tmp/src\n"
        "USER 1001\n"
        "RUN if [ -x /tmp/src/.s2i/bin/assemble ]; then /tmp/src/.s2i/bin/assemble; "
        f"else {s}/assemble; fi\n"
        f'CMD ["{s}/run"]\n'
    )
