"""The fake kubelet's status shapes (``aicoe_devcluster.kubelet``): the phase and conditions
of a pod from its containers' states, and which pods run to completion."""

from __future__ import annotations

import pytest

from aicoe_devcluster.kubelet import (
    owned_by_job,
    pod_phase,
    pod_status,
    running,
    running_status,
    terminated,
)

BUILD = {
    "metadata": {"name": "b-run", "uid": "u1", "labels": {"job-name": "b"}},
    "spec": {
        "restartPolicy": "Never",
        "initContainers": [{"name": "build", "image": "i"}],
        "containers": [{"name": "push", "image": "i"}],
    },
}
T = "2024-01-01T00:00:00Z"
OK, FAIL = terminated(0, "", T, T), terminated(2, "no", T, T)


@pytest.mark.parametrize(
    ("states", "phase"),
    [
        ({}, "Pending"),
        ({"build": running(T)}, "Pending"),
        ({"build": FAIL}, "Failed"),
        ({"build": OK}, "Pending"),
        ({"build": OK, "push": running(T)}, "Running"),
        ({"build": OK, "push": OK}, "Succeeded"),
        ({"build": OK, "push": FAIL}, "Failed"),
    ],
)
def test_phase_of_a_run_to_completion_pod(states, phase):
    assert pod_phase(BUILD, states) == phase


def test_status_per_step():
    status = pod_status(BUILD, {"build": OK, "push": running(T)})
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert status["initContainerStatuses"][0]["state"] == OK
    assert status["containerStatuses"][0]["ready"] is True
    waiting = pod_status(BUILD, {"build": running(T)})["containerStatuses"][0]
    assert waiting["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert waiting["ready"] is False
    done = pod_status(BUILD, {"build": OK, "push": terminated(0, "sha256:x", T, T)})
    assert done["phase"] == "Succeeded"
    assert {c["type"]: c["status"] for c in done["conditions"]}["Ready"] == "False"
    assert done["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_a_notebook_pod_on_paper_is_running_and_ready():
    pod = {"metadata": {"name": "nb"}, "spec": {"containers": [{"name": "notebook"}]}}
    status = running_status(pod, "10.0.0.7")
    assert status["phase"] == "Running" and status["podIP"] == "10.0.0.7"
    assert "initContainerStatuses" not in status
    assert all(c["status"] == "True" for c in status["conditions"])


def test_only_a_jobs_pods_run_to_completion():
    assert owned_by_job(BUILD)
    owned = {"metadata": {"name": "p", "ownerReferences": [{"kind": "Job", "name": "j"}]}}
    assert owned_by_job(owned)
    # KubeSpawner's pods are restartPolicy OnFailure, yet no Job owns them
    notebook = {"metadata": {"name": "jupyter-a", "labels": {"component": "singleuser-server"}}}
    assert not owned_by_job(notebook)
