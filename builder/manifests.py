"""Deployment manifests for an image: Kubernetes (Deployment, Service, HorizontalPodAutoscaler,
PodDisruptionBudget), a KServe InferenceService, and a compose file for Docker Swarm.

Each is Python data made from the image contract (`mlimg_runtime.contract`: port, user, probes'
paths, graceful timeout, scratch path) and the serving engine (its ports and health check), then
written with `yaml.safe_dump`: no text template, and no value of the contract written twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import mlimg
from mlimg import daemon
from mlimg.engines import DEFAULT_ENGINE, ServingEngine, serving_engine
from mlimg.errors import EngineUnavailable, InvalidOption
from mlimg.files import write_whole
from mlimg.model import LocalModel
from mlimg_runtime import contract

TARGETS = ("kubernetes", "kserve", "compose")
ENDPOINT_MODES = ("vip", "dnsrr")
# Seconds the pod keeps serving after Kubernetes marks it terminating, before SIGTERM: the
# endpoints controller and every node's proxy need a moment to stop sending it new requests.
PRE_STOP_SECONDS = 5
_MARGIN_SECONDS = 5  # beyond the pre-stop pause and the graceful timeout, before SIGKILL
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAME_LIMIT = 53  # KServe names the predictor's Knative service NAME-predictor (63 at most)
_LABEL_VALUE_LIMIT = 63
_KSERVE_CONTAINER = "kserve-container"  # the container name KServe requires of a predictor
METRICS_PATH = "/metrics"  # on an engine's "metrics" port


@dataclass(frozen=True)
class ManifestOptions:
    """How the model is run: the user's choices, each with a default that suits most models."""

    name: str | None = None  # the objects' name; default: from the model's name
    replicas: int = 2
    max_replicas: int = 5  # the autoscaler's ceiling
    autoscale: bool = True  # a HorizontalPodAutoscaler (KServe: min/max replicas)
    cpu_target: int = 70  # the autoscaler's CPU utilisation target, in percent
    disruption_budget: bool = True  # a PodDisruptionBudget
    cpu: str = "1"  # each replica's CPU, as a Kubernetes quantity (request = limit)
    memory: str = "2Gi"  # each replica's memory, as a Kubernetes quantity (request = limit)
    publish: int = 5000  # compose: the host port, in front of the contract's
    endpoint_mode: str = "vip"  # compose: "dnsrr" for a swarm without the routing mesh


@dataclass(frozen=True)
class Deployable:
    """What the manifests describe: one image of one model, served by one engine."""

    image: str  # REPOSITORY@DIGEST when known, else the reference as given
    engine: ServingEngine
    model: LocalModel
    options: ManifestOptions

    @property
    def name(self) -> str:
        return self.options.name or object_name(self.model.display_name)

    @property
    def workers(self) -> int:
        """One worker per whole CPU of the limit (at least one): the runtime would count the
        cgroup's quota itself, but a manifest that says it is easier to reason about."""
        return max(1, math.floor(cpu_cores(self.options.cpu)))

    @property
    def graceful_timeout(self) -> int:
        return int(contract.default("graceful_timeout"))  # type: ignore[call-overload]

    @property
    def termination_grace(self) -> int:
        """Kubernetes' SIGKILL comes this long after the pod starts terminating: the pre-stop
        pause, then the runtime's graceful timeout for requests in flight, then a margin."""
        return PRE_STOP_SECONDS + self.graceful_timeout + _MARGIN_SECONDS

    @property
    def ports(self) -> tuple[tuple[str, int], ...]:
        return (("http", contract.PORT), *self.engine.ports)


@dataclass(frozen=True)
class ManifestFile:
    path: Path
    target: str
    apply: str  # the command that applies it


def check_options(options: ManifestOptions) -> None:
    """Refuse values Kubernetes or Swarm would refuse, before anything is written."""
    if options.name is not None and not (
        _DNS_LABEL.match(options.name) and len(options.name) <= _NAME_LIMIT
    ):
        raise InvalidOption(
            f"--name {options.name!r}: use lower-case letters, digits and '-', starting with a "
            f"letter, at most {_NAME_LIMIT} characters"
        )
    cpu_cores(options.cpu)
    memory_bytes(options.memory)
    if options.replicas < 1:
        raise InvalidOption("--replicas must be at least 1")
    if options.autoscale and options.max_replicas < options.replicas:
        raise InvalidOption(
            f"--max-replicas {options.max_replicas} is below --replicas {options.replicas}"
        )
    if not 1 <= options.cpu_target <= 100:
        raise InvalidOption("--cpu-target is a percentage: 1 to 100")
    if options.endpoint_mode not in ENDPOINT_MODES:
        raise InvalidOption(f"--endpoint-mode: choose one of {', '.join(ENDPOINT_MODES)}")


def cpu_cores(quantity: str) -> float:
    match = _CPU.match(quantity)
    if not match or float(match.group(1)) == 0:
        raise InvalidOption(f"--cpu {quantity!r}: give cores (1, 0.5) or millicores (500m)")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def memory_bytes(quantity: str) -> int:
    match = _MEMORY.match(quantity)
    if not match or int(match.group(1)) == 0:
        raise InvalidOption(f"--memory {quantity!r}: give a Kubernetes quantity (2Gi, 512Mi)")
    return int(match.group(1)) * _MEMORY_FACTORS[match.group(2)]


def object_name(text: str) -> str:
    """A Kubernetes object name (an RFC 1035 label) from a model's name: `Iris Classifier_v2`
    becomes `iris-classifier-v2`."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"model-{name}".rstrip("-")
    return name[:_NAME_LIMIT].rstrip("-")


def label_value(text: str) -> str:
    """A Kubernetes label value: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends (the
    annotations keep the value as it is)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip("-_.")
    return value[:_LABEL_VALUE_LIMIT].rstrip("-_.")


# What the manifests' labels and annotations say about the model, read from the same fields
# as the image's labels (`mlimg.model.*`).
def _model_facts(model: LocalModel) -> dict[str, str | None]:
    return {
        "model-name": model.display_name,
        "model-version": model.registered_version,
        "run-id": model.run_id,
    }


def _labels(deployable: Deployable) -> dict[str, str]:
    labels = _selector(deployable) | {
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": "mlimg",
    }
    for key, value in _model_facts(deployable.model).items():
        if value and label_value(value):
            labels[f"mlimg/{key}"] = label_value(value)
    labels["mlimg/engine"] = deployable.engine.name
    return labels


def _selector(deployable: Deployable) -> dict[str, str]:
    # Never the model's version: a Deployment's selector cannot change, its image can.
    return {
        "app.kubernetes.io/name": deployable.name,
        "app.kubernetes.io/instance": deployable.name,
    }


def _annotations(deployable: Deployable) -> dict[str, str]:
    notes = {"mlimg/model-uri": deployable.model.uri, "mlimg/image": deployable.image}
    for key, value in _model_facts(deployable.model).items():
        if value:
            notes[f"mlimg/{key}"] = value
    return notes


def _probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": contract.PORT},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _container_security(deployable: Deployable) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": contract.USER_ID,
        "runAsGroup": contract.USER_ID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _environment(deployable: Deployable, **extra: str) -> list[dict[str, str]]:
    values = contract.environment(workers=deployable.workers) | extra
    return [{"name": name, "value": value} for name, value in values.items()]


def _resources(deployable: Deployable) -> dict[str, Any]:
    amounts = {"cpu": deployable.options.cpu, "memory": deployable.options.memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _metrics_annotations(deployable: Deployable, scrape: str, prefix: str) -> dict[str, str]:
    """Where Prometheus finds the engine's metrics, for engines that serve them."""
    port = dict(deployable.engine.ports).get("metrics")
    if port is None:
        return {}
    return {scrape: "true", f"{prefix}/port": str(port), f"{prefix}/path": METRICS_PATH}


def kubernetes_objects(deployable: Deployable) -> list[dict[str, Any]]:
    name, options = deployable.name, deployable.options
    labels, selector = _labels(deployable), _selector(deployable)
    metadata = {"name": name, "labels": labels, "annotations": _annotations(deployable)}
    container = {
        "name": "model",
        "image": deployable.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": port_name, "containerPort": port, "protocol": "TCP"}
            for port_name, port in deployable.ports
        ],
        "env": _environment(deployable),
        "resources": _resources(deployable),
        # Up to ten minutes to load the model; then ready on /ping, alive on /version, which
        # answers from the first moment, so a slow load is never mistaken for a dead server.
        "startupProbe": _probe(contract.HEALTH_PATH, 2, 2, 300),
        "readinessProbe": _probe(contract.HEALTH_PATH, 5, 3, 2),
        "livenessProbe": _probe(contract.LIVENESS_PATH, 10, 5, 6),
        "lifecycle": {
            "preStop": {
                "exec": {
                    "command": ["python", "-c", f"import time; time.sleep({PRE_STOP_SECONDS})"]
                }
            }
        },
        "securityContext": _container_security(deployable),
        "volumeMounts": [{"name": "scratch", "mountPath": contract.SCRATCH_PATH}],
    }
    deployment_spec: dict[str, Any] = {
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": selector},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": _metrics_annotations(
                    deployable, "prometheus.io/scrape", "prometheus.io"
                ),
            },
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": deployable.termination_grace,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": contract.USER_ID,
                    "runAsGroup": contract.USER_ID,
                    "fsGroup": contract.USER_ID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        },
    }
    if not deployment_spec["template"]["metadata"]["annotations"]:
        del deployment_spec["template"]["metadata"]["annotations"]
    if not options.autoscale:
        # With an autoscaler the count is its to keep: a `replicas` here would reset it on
        # every `kubectl apply`.
        deployment_spec = {"replicas": options.replicas, **deployment_spec}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": deployment_spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {
                        "name": port_name,
                        "port": 80 if port_name == "http" else port,
                        "targetPort": port_name,
                        "protocol": "TCP",
                    }
                    for port_name, port in deployable.ports
                ],
            },
        },
    ]
    if options.autoscale:
        objects.append({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": options.replicas,
                "maxReplicas": options.max_replicas,
                "metrics": [{
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": options.cpu_target},
                    },
                }],
            },
        })  # fmt: skip
    if options.disruption_budget:
        objects.append({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "labels": labels},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        })  # fmt: skip
    return objects


def inference_service(deployable: Deployable) -> dict[str, Any]:
    """A KServe InferenceService with the image as its custom predictor.

    KServe's default (serverless) mode runs it as a Knative service, whose admission refuses
    what a Deployment may have: more than one container port, pod-level security settings and
    (in Knative releases before 1.15) startup probes. So the predictor has one port, the
    security settings on its container, readiness on /ping (Knative routes to it only once
    ready) and liveness on /version. With no scratch volume (Knative refuses emptyDir unless an
    operator allows it) the runtime writes to /dev/shm. Autoscaling is KServe's own between the
    replica bounds (by concurrency, in serverless mode).
    """
    name, options = deployable.name, deployable.options
    extra: dict[str, str] = {}
    annotations = _annotations(deployable)
    if deployable.engine.v2_protocol:
        # KServe routes /v2/models/NAME/... by the InferenceService's name, and reads the
        # custom container's protocol from PROTOCOL.
        extra = {contract.setting("model_name").variable: name, "PROTOCOL": "v2"}
    annotations |= _metrics_annotations(
        deployable, "serving.kserve.io/enable-prometheus-scraping", "prometheus.kserve.io"
    )
    predictor: dict[str, Any] = {
        "minReplicas": options.replicas,
        "maxReplicas": options.max_replicas if options.autoscale else options.replicas,
        "containers": [{
            "name": _KSERVE_CONTAINER,
            "image": deployable.image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": contract.PORT, "protocol": "TCP"}],
            "env": _environment(deployable, **extra),
            "resources": _resources(deployable),
            "readinessProbe": _probe(contract.HEALTH_PATH, 5, 3, 2),
            "livenessProbe": _probe(contract.LIVENESS_PATH, 10, 5, 6),
            "securityContext": _container_security(deployable),
        }],
    }  # fmt: skip
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": _labels(deployable), "annotations": annotations},
        "spec": {"predictor": predictor},
    }


def compose_file(deployable: Deployable) -> dict[str, Any]:
    """A compose file (format 3.8) for `docker stack deploy`: replicas, the image's health
    check gating start-first rolling updates, automatic rollback, limits, a read-only root."""
    options = deployable.options
    grace = deployable.graceful_timeout + _MARGIN_SECONDS
    cpus = f"{cpu_cores(options.cpu):g}"
    memory = _docker_memory(memory_bytes(options.memory))
    service: dict[str, Any] = {
        "image": deployable.image,
        "environment": contract.environment(workers=deployable.workers),
        "read_only": True,
        # The long syntax: `docker stack deploy` ignores the `tmpfs` key, not a tmpfs volume.
        "volumes": [{"type": "tmpfs", "target": contract.SCRATCH_PATH}],
        "healthcheck": {
            "test": ["CMD", *deployable.engine.healthcheck],
            "interval": "5s",
            "timeout": "3s",
            "retries": 3,
            "start_period": "120s",
        },
        "stop_grace_period": f"{grace}s",
        "deploy": {
            "replicas": options.replicas,
            "endpoint_mode": options.endpoint_mode,
            "update_config": {
                "parallelism": 1,
                "delay": "2s",
                "order": "start-first",
                "failure_action": "rollback",
                "monitor": "20s",
            },
            "rollback_config": {"parallelism": 1, "order": "start-first"},
            "restart_policy": {"condition": "any", "delay": "2s"},
            "resources": {
                "limits": {"cpus": cpus, "memory": memory},
                "reservations": {"cpus": cpus, "memory": memory},
            },
            "labels": _annotations(deployable) | {"mlimg/engine": deployable.engine.name},
        },
    }
    if options.endpoint_mode == "vip":
        service["ports"] = [
            {"target": contract.PORT, "published": options.publish, "protocol": "tcp"}
        ]
    return {"version": "3.8", "services": {deployable.name: service}}


def _docker_memory(size: int) -> str:
    """A size as Docker reads it (binary units)."""
    for unit, factor in (("g", 2**30), ("m", 2**20), ("k", 2**10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"


def deployable(
    model: LocalModel,
    image: str,
    engine: str | None,
    options: ManifestOptions,
    report: Callable[[str], None],
) -> Deployable:
    """The image to deploy, pinned by the digest the Docker engine knows for it (if it has
    been pushed or pulled), served by the engine it was built with (its `mlimg.engine` label,
    when the image is at hand), and refused if its labels name another model than `model`."""
    check_options(options)
    check_reference(image)
    labels = None
    if "@" not in image:
        try:
            client = daemon.connect()
        except EngineUnavailable:
            report(f"note: no Docker engine to look {image} up in; it is used as given")
        else:
            labels = daemon.image_labels(client, image)
            pinned = daemon.repo_digest(client, image)
            if pinned:
                image = pinned
    labels = labels or {}
    holds = labels.get("mlimg.model.uuid")
    if holds and model.model_uuid and holds != model.model_uuid:
        raise InvalidOption(
            f"the image {image} holds another model (uuid {holds}, from "
            f"{labels.get('mlimg.model.uri', 'an unknown URI')}) than {model.uri} (uuid "
            f"{model.model_uuid}): the manifests' labels would describe the wrong model"
        )
    built_with = labels.get("mlimg.engine")
    if engine is not None and built_with is not None and engine != built_with:
        raise InvalidOption(
            f"the image {image} was built for the {built_with} engine, not {engine}: drop "
            f"--engine, or build the image with --engine {engine}"
        )
    return Deployable(image, serving_engine(engine or built_with or DEFAULT_ENGINE), model, options)


def check_reference(image: str) -> None:
    """REPOSITORY[:TAG] or REPOSITORY[:TAG]@sha256:HEX, as Docker and Kubernetes read it."""
    name, _, digest = image.partition("@")
    daemon.check_tag(name, "--image")
    if digest and not _DIGEST.match(digest):
        raise InvalidOption(f"--image {image!r}: the digest is not sha256: and 64 hex digits")


def write_manifests(
    deployable: Deployable, targets: tuple[str, ...], output_dir: Path
) -> list[ManifestFile]:
    """Write one file per target into `output_dir`, each replaced whole or not at all."""
    check_options(deployable.options)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for target in dict.fromkeys(targets):
        documents, apply = _render(deployable, target)
        path = output_dir / f"{deployable.name}.{target}.yaml"
        command = apply.replace("FILE", str(path))
        text = _header(deployable, target, command) + "---\n".join(
            yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)
            for document in documents
        )
        write_whole(path, text)
        written.append(ManifestFile(path, target, command))
    return written


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper, writing a shared value out each time (no &anchors, which
    tools and readers of Kubernetes files do not expect)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _render(deployable: Deployable, target: str) -> tuple[list[dict[str, Any]], str]:
    if target == "kubernetes":
        return kubernetes_objects(deployable), "kubectl apply -f FILE"
    if target == "kserve":
        return [inference_service(deployable)], "kubectl apply -f FILE  (KServe installed)"
    if target == "compose":
        return [compose_file(deployable)], f"docker stack deploy -c FILE {deployable.name}"
    raise InvalidOption(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def _header(deployable: Deployable, target: str, command: str) -> str:
    pinned = "@sha256:" in deployable.image
    lines = [
        f"Made by mlimg {mlimg.__version__} (mlimg generate-manifests --target {target}) for",
        f"the model {deployable.model.uri}, served by the {deployable.engine.name} engine,",
        f"from the image {deployable.image}"
        + ("" if pinned else " (a tag, not pinned by digest: push with mlimg push to pin it)")
        + ".",
        f"Apply it with: {command}",
    ]
    if target == "compose" and deployable.options.endpoint_mode == "dnsrr":
        lines.append(
            f"dnsrr: no published port; put a load balancer on the stack's network that sends to "
            f"tasks.{deployable.name}:{contract.PORT}."
        )
    return "".join(f"# {line}\n" for line in lines)
