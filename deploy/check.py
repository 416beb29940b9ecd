"""Validate deploy/ without a cluster: render, schema-check, policy-check, scan and lint. Exit 1 on any failure.

Run through ``deploy/check.sh`` (builds the tools' venv, ``.venv-deploy``); directly only with that venv's
Python. Steps, each reported on one line and all run even when one fails:

* ``render``: ``kubectl kustomize`` every folder under ``deploy/overlays/`` plus ``deploy/batch``;
* ``schema``: every rendered object against the Kubernetes JSON schemas (``kubernetes-validate``, strict: an
  unknown field fails) for each version in ``K8S_VERSIONS``; PodMonitor and RayJob against the partial schemas
  in ``deploy/schemas/``; every pod template inside a RayJob as a ``v1/Pod``. A kind with no schema fails;
* ``policy``: cross-object rules no schema or scanner knows (drain grace, probe ports, GPU settings);
* ``checkov``: misconfiguration scan of the rendered objects plus the RayJob pods (``deploy/.checkov.yaml``
  lists each accepted finding with its reason);
* ``yamllint``: every YAML file under ``deploy/`` (``deploy/.yamllint.yaml``, warnings fail).

Usage: ``python deploy/check.py [--only STEP ...] [--root DIR] [--keep DIR]`` (``--root``: another deploy
folder, used by the tests to check a deliberately broken copy).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
# Oldest supported (native preStop `sleep`: 1.30; gRPC probes GA: 1.27) and newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.v1.yaml",
    ("ray.io/v1", "RayJob"): "rayjob.v1.yaml",
}
STEPS = ("render", "schema", "policy", "checkov", "yamllint")


@dataclass
class Rendered:
    """One rendered kustomization: its name, output file and objects."""

    name: str
    path: Path
    docs: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- render
def targets(root: Path) -> list[Path]:
    """Every overlay plus the batch kustomization."""
    overlays = sorted(p for p in (root / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    return [*overlays, root / "batch"]


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("kubectl not found: run deploy/check.sh (installs it) or set KUBECTL")
    return found


def render(root: Path, out: Path, errors: list[str]) -> list[Rendered]:
    result = []
    for target in targets(root):
        name = target.name
        proc = subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            errors.append(f"{target.relative_to(root)}: kustomize failed: {proc.stderr.strip()}")
            continue
        path = out / f"{name}.yaml"
        path.write_text(proc.stdout)
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        result.append(Rendered(name, path, docs))
    return result


def ray_pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod templates of a RayJob, each as a standalone ``v1/Pod`` (what KubeRay will create)."""
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec", {})
    templates = [("submitter", spec.get("submitterPodTemplate"))]
    templates.append(("head", cluster.get("headGroupSpec", {}).get("template")))
    for group in cluster.get("workerGroupSpecs", []):
        templates.append((f"worker-{group.get('groupName')}", group.get("template")))
    for role, template in templates:
        if not template:
            continue
        meta = copy.deepcopy(template.get("metadata", {}))
        meta["name"] = f"{doc['metadata']['name']}-{role}"
        if "namespace" in doc["metadata"]:
            meta["namespace"] = doc["metadata"]["namespace"]
        yield role, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


# ---------------------------------------------------------------------------------------------------- schema
def crd_schema(root: Path, name: str) -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load((root / "schemas" / name).read_text())
    return schema


def schema_errors(root: Path, rendered: list[Rendered]) -> list[str]:
    errors = []
    for r in rendered:
        for doc in r.docs:
            where = f"{r.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CRD_SCHEMAS:
                validator = jsonschema.Draft7Validator(crd_schema(root, CRD_SCHEMAS[key]))
                errors += [
                    f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in validator.iter_errors(doc)
                ]
                if doc["kind"] == "RayJob":
                    for role, pod in ray_pods(doc):
                        errors += k8s_errors(f"{where} ({role} pod template)", pod)
                continue
            errors += k8s_errors(where, doc)
    return errors


def k8s_errors(where: str, doc: dict[str, Any]) -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            errors.append(f"{where}: Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(
                f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in {version} "
                "(add one to deploy/schemas/ or remove the object)"
            )
    return errors


# ---------------------------------------------------------------------------------------------------- policy
def policy_errors(rendered: list[Rendered]) -> list[str]:
    errors = []
    for r in rendered:
        maps = {d["metadata"]["name"]: d.get("data", {}) for d in r.docs if d.get("kind") == "ConfigMap"}
        for d in r.docs:
            if d.get("kind") == "Deployment":
                errors += [
                    f"{r.name}: Deployment/{d['metadata']['name']}: {e}" for e in deployment_rules(r, d, maps)
                ]
    return errors


def deployment_rules(r: Rendered, d: dict[str, Any], maps: dict[str, dict[str, str]]) -> Iterator[str]:
    pod = d["spec"]["template"]["spec"]
    for c in pod["containers"]:
        settings: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            settings.update(maps.get(ref.get("configMapRef", {}).get("name", ""), {}))
        grace = float(settings.get("DQE_GRACE_S", "30"))
        sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        total = pod.get("terminationGracePeriodSeconds", 30)
        if total <= grace + sleep:
            yield f"terminationGracePeriodSeconds {total} <= preStop sleep {sleep} + DQE_GRACE_S {grace:g}"
        port = int(settings.get("DQE_PORT", "50051"))
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        if named.get("grpc") != port:
            yield f"container port 'grpc' is {named.get('grpc')}; DQE_PORT is {port}"
        if named.get("metrics") != int(settings.get("DQE_METRICS_PORT", "9464")):
            yield f"container port 'metrics' is {named.get('metrics')}; DQE_METRICS_PORT differs"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe:
                yield f"{kind} missing"
            elif "grpc" in probe and probe["grpc"].get("port") != port:
                yield f"{kind} checks port {probe['grpc'].get('port')}; DQE_PORT is {port}"
            elif "grpc" in probe and settings.get("DQE_TLS_CERT"):
                yield f"{kind} is a native gRPC probe (plaintext) but DQE_TLS_CERT is set"
        limits = c.get("resources", {}).get("limits", {})
        if settings.get("DQE_THREADS") and str(limits.get("cpu")) != settings["DQE_THREADS"]:
            yield f"DQE_THREADS {settings['DQE_THREADS']} differs from the CPU limit {limits.get('cpu')}"
        gpus = limits.get("nvidia.com/gpu")
        if r.name.startswith("gpu") and not gpus:
            yield "GPU overlay without an nvidia.com/gpu limit"
        if gpus and settings.get("DQE_PRECISION") != "fp16":
            yield f"GPU pod with DQE_PRECISION={settings.get('DQE_PRECISION')}; expected fp16"
        if not gpus and settings.get("DQE_PRECISION") == "fp16":
            yield "DQE_PRECISION=fp16 on a pod without a GPU"
    if "replicas" in d["spec"] and any(
        o.get("kind") == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
        for o in r.docs
    ):
        yield "spec.replicas is set while an HPA scales this Deployment (apply would reset it)"


# ---------------------------------------------------------------------------------------------------- tools
def run_checkov(root: Path, rendered: list[Rendered], out: Path) -> list[str]:
    pods = [pod for r in rendered for d in r.docs if d.get("kind") == "RayJob" for _, pod in ray_pods(d)]
    files = [str(r.path) for r in rendered]
    if pods:
        extra = out / "rayjob-pods.yaml"
        extra.write_text(yaml.safe_dump_all(pods, sort_keys=False))
        files.append(str(extra))
    cmd = [str(Path(sys.executable).parent / "checkov"), "--config-file", str(root / ".checkov.yaml")]
    cmd += ["--external-checks-dir", str(root / "checkov-policies")]
    for f in files:
        cmd += ["-f", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "ERROR"})
    report = proc.stdout.strip()
    if proc.returncode != 0:
        return [f"checkov exit {proc.returncode}:\n{report}\n{proc.stderr.strip()[-2000:]}"]
    summary = [line for line in report.splitlines() if line.startswith(("Passed checks", "kubernetes scan"))]
    print("    " + (" ".join(summary) or report[-300:]))
    return []


def run_yamllint(root: Path) -> list[str]:
    cmd = [
        str(Path(sys.executable).parent / "yamllint"),
        "--strict",
        "-c",
        str(root / ".yamllint.yaml"),
        str(root),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return (
        [f"yamllint exit {proc.returncode}:\n{proc.stdout.strip()}{proc.stderr.strip()}"]
        if proc.returncode
        else []
    )


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=HERE, help="the deploy folder to check (default: this one)")
    p.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run")
    p.add_argument(
        "--keep", type=Path, help="write the rendered manifests here (default: a temporary folder)"
    )
    args = p.parse_args(argv)
    root = args.root.resolve()
    with tempfile.TemporaryDirectory(prefix="dqe-deploy-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        render_errors: list[str] = []
        rendered = render(root, out, render_errors) if set(args.only) - {"yamllint"} else []
        steps: dict[str, Callable[[], list[str]]] = {
            "render": lambda: render_errors,
            "schema": lambda: schema_errors(root, rendered),
            "policy": lambda: policy_errors(rendered),
            "checkov": lambda: run_checkov(root, rendered, out),
            "yamllint": lambda: run_yamllint(root),
        }
        failed = []
        for step in STEPS:
            if step not in args.only:
                continue
            errors = steps[step]()
            detail = (
                f"{sum(len(r.docs) for r in rendered)} objects in {len(rendered)} renders"
                if step == "render"
                else ""
            )
            print(f"{step:9s} {'FAIL' if errors else 'ok'}  {detail}".rstrip(), flush=True)
            for e in errors:
                print("    " + e.replace("\n", "\n    "))
            if errors:
                failed.append(step)
        print(json.dumps({"failed": failed, "kubernetes_versions": K8S_VERSIONS}))
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
