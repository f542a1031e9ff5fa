"""The image builder service: Git repository + ref -> notebook image registered as an
ImageStream. Pure modules (requests, ci_config, source, backends' manifests) know nothing of
Kubernetes clients or tornado; store, registration and app are the thin I/O shells."""
