"""The KubeRay manifests against the real CRDs of the oldest and the newest supported KubeRay
release (vendored in kuberay_crds/), in strict mode, and against the operator's own rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cluster.kuberay_schema import (
    CEL_REFUSED,
    CRD_DIR,
    SUPPORTED_RELEASES,
    crd_document,
    operator_rule_errors,
    schema_errors,
)

KUBERAY = Path(__file__).resolve().parents[2] / "cluster" / "kuberay"
MANIFESTS = ("raycluster.yaml", "rayjob-train.yaml", "rayjob-enhance.yaml")


def manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


@pytest.mark.parametrize("release", SUPPORTED_RELEASES)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_accepted_by_the_crd_schema_in_strict_mode(name, release):
    assert schema_errors(manifest(name), release) == []


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_the_operators_validation_rules(name):
    assert operator_rule_errors(manifest(name)) == []


def test_vendored_crds_are_the_releases_named_in_their_readme():
    readme = (CRD_DIR / "README.md").read_text()
    assert "Apache License" in (CRD_DIR / "LICENSE").read_text()
    for release in SUPPORTED_RELEASES:
        assert release in readme
        for kind in ("RayCluster", "RayJob"):
            crd = crd_document(release, kind)
            assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
            assert crd["spec"]["names"]["kind"] == kind


@pytest.mark.parametrize("release", SUPPORTED_RELEASES)
def test_strict_schema_refuses_an_unknown_field_and_a_wrong_type(release):
    job = manifest("rayjob-train.yaml")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 4
    job["spec"]["backoffLimit"] = "2"
    errors = schema_errors(job, release)
    assert any("'minReplica' was unexpected" in error for error in errors)
    assert any(error.startswith("spec/backoffLimit:") for error in errors)
    assert len(errors) == 2


@pytest.mark.parametrize("release", SUPPORTED_RELEASES)
def test_strict_schema_takes_quantities_as_integers_or_strings(release):
    cluster = manifest("raycluster.yaml")
    limits = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    limits["resources"]["limits"]["cpu"] = 8
    limits["resources"]["limits"]["nvidia.com/gpu"] = 1
    assert schema_errors(cluster, release) == []
    limits["resources"]["limits"]["cpu"] = [8]
    assert schema_errors(cluster, release) != []


def test_a_field_only_a_cel_rule_checks_is_refused():
    job = manifest("rayjob-train.yaml")
    job["spec"]["managedBy"] = "ray.io/kuberay-operator"
    for release in SUPPORTED_RELEASES:
        assert schema_errors(job, release) == [f"spec/managedBy: {CEL_REFUSED}"]


def test_deadlines_must_be_positive():
    job = manifest("rayjob-train.yaml")
    assert job["spec"]["preRunningDeadlineSeconds"] > 0
    job["spec"]["preRunningDeadlineSeconds"] = 0
    assert operator_rule_errors(job) == ["preRunningDeadlineSeconds must be a positive integer"]


def test_operator_refuses_retries_on_a_selected_shared_cluster():
    job = manifest("rayjob-enhance.yaml")
    assert "clusterSelector" in job["spec"] and "backoffLimit" not in job["spec"]
    job["spec"]["backoffLimit"] = 2
    assert operator_rule_errors(job) == ["BackoffLimit is incompatible with ClusterSelector mode"]
    for release in SUPPORTED_RELEASES:
        assert schema_errors(job, release) == [], "the schema allows it: only the operator says no"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.update(shutdownAfterJobFinishes=False), "cannot have TTLSecondsAfterFinished"),
        (lambda s: s.pop("rayClusterSpec"), "one of RayClusterSpec or ClusterSelector must be set"),
        (lambda s: s.update(submissionMode="InteractiveMode"), "incompatible with InteractiveMode"),
        (
            lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=5),
            "minReplicas 5 greater than maxReplicas 4",
        ),
        (
            lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].pop("maxReplicas"),
            "must set both minReplicas and maxReplicas",
        ),
        (
            lambda s: s["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(labels="a=b"),
            "rayStartParams['labels'] is not supported",
        ),
        (lambda s: s.update(runtimeEnvYAML="a: [b"), "runtimeEnvYAML is not valid YAML"),
    ],
)
def test_operator_rules_catch_what_kuberay_refuses(change, expected):
    job = manifest("rayjob-train.yaml")
    change(job["spec"])
    errors = operator_rule_errors(job)
    assert len(errors) == 1 and expected in errors[0], errors


def test_names_must_leave_room_for_the_generated_cluster_name():
    job = manifest("rayjob-train.yaml")
    job["metadata"]["name"] = "x" * 48
    assert operator_rule_errors(job) == ["RayJob name should be no more than 47 characters"]
    job["metadata"]["name"] = "Enlightengan"
    assert operator_rule_errors(job) == ["RayJob name should be a valid DNS1035 label"]
