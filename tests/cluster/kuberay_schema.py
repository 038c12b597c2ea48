"""KubeRay manifests checked the way a cluster would check them, offline.

Two layers, as ``kubectl apply`` meets them:

1. The API server validates the object against the CRD's OpenAPI schema. The vendored CRDs
   (``kuberay_crds/<release>/``, see its README) are turned strict: an object schema that lists
   its properties and does not preserve unknown fields rejects any other field (kubectl's
   default ``--validate=strict`` does the same), ``x-kubernetes-int-or-string`` takes an integer
   or a string, ``nullable`` takes null. CEL rules (``x-kubernetes-validations``) are not
   evaluated here: a field guarded by one is refused, so a manifest never silently relies on a
   rule this check skips.
2. The operator validates the spec when it reconciles: :func:`operator_rule_errors` ports the
   rules of KubeRay v1.7.0's ``ray-operator/controllers/ray/utils/validation.go`` that apply to
   what these manifests use (names, groups, replicas, RayJob modes, deadlines, retries).
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "kuberay_crds"
# The oldest and the newest KubeRay release the manifests are written for (docs/clusters/index.md).
SUPPORTED_RELEASES = ("v1.6.0", "v1.7.0")
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
CLUSTER_SELECTOR_KEY = "ray.io/cluster"
RESOURCE_START_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
CEL_REFUSED = "guarded by a CEL rule (x-kubernetes-validations) that is not evaluated offline"


def load_yaml(path: Path):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as handle:
        return yaml.load(handle, Loader=loader)


def strict_schema(schema: dict) -> dict | bool:
    """A copy of an OpenAPI v3 (structural) schema that JSON Schema validates the way the API
    server with strict field validation does."""
    if schema.get("x-kubernetes-validations"):
        return {"not": {}, "description": CEL_REFUSED}
    strict = copy.copy(schema)
    if strict.get("x-kubernetes-int-or-string") and "anyOf" not in strict:
        strict.pop("type", None)
        strict["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if strict.get("nullable") and "type" in strict:
        strict["type"] = [strict["type"], "null"]
    if "properties" in strict:
        strict["properties"] = {
            name: strict_schema(sub) for name, sub in strict["properties"].items()
        }
        if not strict.get("x-kubernetes-preserve-unknown-fields"):
            strict.setdefault("additionalProperties", False)
    if isinstance(strict.get("additionalProperties"), dict):
        strict["additionalProperties"] = strict_schema(strict["additionalProperties"])
    if isinstance(strict.get("items"), dict):
        strict["items"] = strict_schema(strict["items"])
    for keyword in ("anyOf", "allOf", "oneOf"):
        if keyword in strict:
            strict[keyword] = [strict_schema(sub) for sub in strict[keyword]]
    return strict


@functools.cache
def crd_document(release: str, kind: str) -> dict:
    """The vendored CRD of ``kind`` in ``release``, read once."""
    return load_yaml(CRD_DIR / release / CRD_FILES[kind])


@functools.cache
def crd_validator(release: str, kind: str) -> jsonschema.Draft4Validator:
    """The strict validator of ``kind`` (``ray.io/v1``) in the vendored CRD of ``release``."""
    crd = crd_document(release, kind)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    return jsonschema.Draft4Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def schema_errors(manifest: dict, release: str) -> list[str]:
    """What the API server of a cluster running ``release``'s CRDs would refuse, as
    ``path: message`` lines; empty when the manifest is accepted."""
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") not in CRD_FILES:
        return [f"not a ray.io/v1 RayCluster or RayJob: {manifest.get('apiVersion')}"]
    validator = crd_validator(release, manifest["kind"])
    errors = []
    for error in validator.iter_errors(manifest):
        refused = error.validator == "not" and error.schema.get("description") == CEL_REFUSED
        message = CEL_REFUSED if refused else error.message
        errors.append("/".join(str(part) for part in error.absolute_path) + ": " + message)
    return sorted(errors)


def _group_errors(name: str, group: dict, autoscaling: bool) -> list[str]:
    errors = []
    if not group.get("template", {}).get("spec", {}).get("containers"):
        errors.append(f"{name} group should have at least one container")
    start_params = group.get("rayStartParams") or {}
    if "labels" in start_params:
        errors.append(f"rayStartParams['labels'] is not supported for {name} group")
    if group.get("resources") and any(start_params.get(key) for key in RESOURCE_START_PARAMS):
        errors.append(f"resource fields set in both rayStartParams and resources for {name}")
    if name == "Head":
        return errors
    low, high = group.get("minReplicas"), group.get("maxReplicas")
    if not autoscaling and (low is None or high is None):
        errors.append(f"worker group {name} must set both minReplicas and maxReplicas")
    if low is not None and low < 0 or high is not None and high < 0:
        errors.append(f"worker group {name} has negative replicas")
    if low is not None and high is not None and low > high:
        errors.append(f"worker group {name} has minReplicas {low} greater than maxReplicas {high}")
    return errors


def ray_cluster_spec_errors(spec: dict) -> list[str]:
    """KubeRay's ``ValidateRayClusterSpec`` for the fields these manifests use."""
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    errors = _group_errors("Head", spec.get("headGroupSpec", {}), autoscaling)
    for group in spec.get("workerGroupSpecs", []):
        errors += _group_errors(group.get("groupName", "?"), group, autoscaling)
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if idle is not None and idle < 0:
        errors.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")
    return errors


def _name_errors(manifest: dict) -> list[str]:
    name = manifest.get("metadata", {}).get("name", "")
    longest = MAX_RAYJOB_NAME if manifest["kind"] == "RayJob" else MAX_RAYCLUSTER_NAME
    errors = []
    if len(name) > longest:
        errors.append(f"{manifest['kind']} name should be no more than {longest} characters")
    if not DNS_1035.match(name):
        errors.append(f"{manifest['kind']} name should be a valid DNS1035 label")
    return errors


def ray_job_spec_errors(spec: dict) -> list[str]:
    """KubeRay's ``ValidateRayJobSpec`` for the fields these manifests use."""
    errors = []
    shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished")
    mode, backoff = spec.get("submissionMode", "K8sJobMode"), spec.get("backoffLimit")
    if ttl is not None and ttl < 0:
        errors.append("TTLSecondsAfterFinished must be a non-negative integer")
    if not shutdown and ttl:
        errors.append("shutdownAfterJobFinishes false cannot have TTLSecondsAfterFinished")
    selector = spec.get("clusterSelector") or {}
    if selector and spec.get("suspend"):
        errors.append("the ClusterSelector mode doesn't support the suspend operation")
    if spec.get("rayClusterSpec") is None and not selector:
        errors.append("one of RayClusterSpec or ClusterSelector must be set")
    if selector:
        if not selector.get(CLUSTER_SELECTOR_KEY):
            errors.append("cluster name in ClusterSelector should not be empty")
        if mode == "SidecarMode":
            errors.append("ClusterSelector is not supported in SidecarMode")
        if backoff:
            errors.append("BackoffLimit is incompatible with ClusterSelector mode")
    if mode == "InteractiveMode" and backoff:
        errors.append("BackoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
        errors.append("SidecarMode doesn't support SubmitterPodTemplate or SubmitterConfig")
    if spec.get("rayClusterSpec") is not None:
        errors += ray_cluster_spec_errors(spec["rayClusterSpec"])
    try:
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as error:
        errors.append(f"runtimeEnvYAML is not valid YAML: {error}")
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if spec.get(field) is not None and spec[field] <= 0:
            errors.append(f"{field} must be a positive integer")
    if backoff is not None and backoff < 0:
        errors.append("backoffLimit must be a positive integer")
    return errors


def operator_rule_errors(manifest: dict) -> list[str]:
    """What the KubeRay operator would refuse when it reconciles ``manifest``."""
    errors = _name_errors(manifest)
    spec = manifest.get("spec", {})
    if manifest["kind"] == "RayJob":
        return errors + ray_job_spec_errors(spec)
    return errors + ray_cluster_spec_errors(spec)
