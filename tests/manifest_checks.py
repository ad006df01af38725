"""How the tests validate generated manifests, with no Kubernetes API server (none can run here).

- Every Kubernetes object: kubernetes-validate's strict schemas (an unknown field is an error)
  for the oldest and the newest Kubernetes it knows. An unknown kind, which kubernetes-validate
  only warns about, is an error here.
- A KServe InferenceService (no schema of it ships anywhere reachable): its containers against
  the core Container schema, its pod fields against the PodSpec schema, its metadata against
  ObjectMeta, and its own fields by `check_inference_service` below, written from KServe's
  v1beta1 API reference.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import (
    SchemaNotFoundError,
    ValidationError,
    all_versions,
    major_minor,
    schema_contents,
)
from referencing import Registry, Resource

KUBERNETES_VERSIONS = (all_versions()[0], all_versions()[-1])  # the oldest and the newest known
INFERENCE_SERVICE_API = "serving.kserve.io/v1beta1"
# KServe v1beta1: the predictor's own fields (ComponentExtensionSpec) beside a PodSpec's, and
# the model-format specs a predictor may use instead of containers.
_COMPONENT_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
    "annotations", "deploymentStrategy", "autoScaling", "workerSpec",
}  # fmt: skip
_FORMAT_FIELDS = {
    "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml",
    "lightgbm", "paddle", "huggingface",
}  # fmt: skip
_PROTOCOLS = ("v1", "v2")
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class InvalidManifest(AssertionError):
    pass


def validate_object(document: dict[str, Any], version: str) -> None:
    """Validate one object for one Kubernetes version; raise InvalidManifest saying why."""
    if document.get("kind") == "InferenceService":
        check_inference_service(document, version)
        return
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except SchemaNotFoundError as exc:
        raise InvalidManifest(f"unknown kind for Kubernetes {version}: {exc}") from None
    except ValidationError as exc:
        raise InvalidManifest(f"Kubernetes {version}: {exc}") from None


def _schema(schema_file: str, version: str) -> dict[str, Any]:
    """One of kubernetes-validate's strict schemas, for the newest it has at or below `version`."""
    schema_version = [v for v in all_versions() if major_minor(v) <= major_minor(version)][-1]
    return schema_contents(
        f"kubernetes-json-schema/v{schema_version}-local-strict/{schema_file}", version
    )


def validate_schema(instance: Any, schema_file: str, version: str) -> None:
    """Validate part of an object against one of kubernetes-validate's strict schemas."""
    schema = _schema(schema_file, version)
    definitions = _schema("_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    try:
        validator.validate(instance)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        raise InvalidManifest(f"{schema_file} at {where or '.'}: {exc.message}") from None


def check_inference_service(document: dict[str, Any], version: str) -> None:
    def fail(message: str) -> None:
        raise InvalidManifest(f"InferenceService: {message}")

    if document.get("apiVersion") != INFERENCE_SERVICE_API:
        fail(f"apiVersion {document.get('apiVersion')!r} is not {INFERENCE_SERVICE_API}")
    unknown = set(document) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        fail(f"unknown top-level fields {sorted(unknown)}")
    metadata = document.get("metadata") or {}
    validate_schema(metadata, "objectmeta-meta-v1.json", version)
    name = metadata.get("name", "")
    if not _NAME.match(name) or len(name) > 53:
        fail(f"metadata.name {name!r} is not a DNS label of at most 53 characters")
    spec = document.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("predictor"), dict):
        fail("spec.predictor is missing")
    unknown = set(spec) - {"predictor", "transformer", "explainer"}
    if unknown:
        fail(f"unknown spec fields {sorted(unknown)}")
    predictor = spec["predictor"]
    pod_fields = set(_schema("podspec-v1.json", version)["properties"])
    unknown = set(predictor) - pod_fields - _COMPONENT_FIELDS - _FORMAT_FIELDS
    if unknown:
        fail(f"unknown predictor fields {sorted(unknown)}")
    if "containers" in predictor:  # the pod's fields, checked as the PodSpec they become
        pod = {key: value for key, value in predictor.items() if key in pod_fields}
        validate_schema(pod, "podspec-v1.json", version)
    for bound in ("minReplicas", "maxReplicas"):
        value = predictor.get(bound, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            fail(f"predictor.{bound} {value!r} is not a whole number of replicas")
    if 0 < predictor.get("maxReplicas", 0) < predictor.get("minReplicas", 0):
        fail("predictor.maxReplicas is below minReplicas")
    containers = predictor.get("containers")
    if not (set(predictor) & _FORMAT_FIELDS):
        if not isinstance(containers, list) or len(containers) != 1:
            fail("a custom predictor has exactly one container")
        if containers[0].get("name") != "kserve-container":
            fail("a custom predictor's container must be named kserve-container")
    for container in containers or ():
        validate_schema(container, "container-v1.json", version)
        protocol = {e.get("name"): e.get("value") for e in container.get("env", [])}.get("PROTOCOL")
        if protocol is not None and protocol not in _PROTOCOLS:
            fail(f"PROTOCOL {protocol!r} is not one of {', '.join(_PROTOCOLS)}")
        if len(container.get("ports", [])) > 1:
            fail("Knative (KServe's serverless mode) allows one container port")
