# syntax=docker/dockerfile:1
# The hub and image-builder image of the aicoe-spawner Helm chart:
#   docker build -t quay.io/aicoe/aicoe-spawner:0.1.0 .
# Runs as a non-root numeric user (OpenShift assigns its own UID; group 0 owns /srv/jupyterhub).
# BASE_IMAGE: a Debian bookworm image with Python >= 3.11 and venv, as `python`. The tests build
# a local one (images/hub-base: git and tini preinstalled, so apt-get is skipped) and pass
# PIP_NO_INDEX/PIP_FIND_LINKS with wheels mounted into the build (no package index needed).
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY aicoe_spawner ./aicoe_spawner
# oauthenticator, ldapauthenticator, jupyterhub-idle-culler, psycopg2-binary, pymysql (z2jh's set)
COPY images/hub/requirements.txt ./hub-requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile . -r hub-requirements.txt \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="aicoe-spawner" \
      org.opencontainers.image.description="JupyterHub with AICoESpawner and the image builder service" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# git: the builder resolves refs and reads .aicoe-ci.yaml; skopeo: the builder's image import
# resolves tags to digests; tini: signal handling as PID 1.
# hadolint ignore=SC2015
RUN command -v git && command -v tini && command -v skopeo || { apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* tini=0.19.* skopeo=1.9.* \
       ca-certificates=2023* \
    && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN useradd --uid 1000 --gid 0 --home-dir /srv/jupyterhub --create-home --shell /usr/sbin/nologin jovyan \
    && chmod g=u /srv/jupyterhub
WORKDIR /srv/jupyterhub
USER 1000
EXPOSE 8081 8080
ENTRYPOINT ["tini", "--"]
CMD ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"]
