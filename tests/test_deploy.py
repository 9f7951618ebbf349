"""deploy/: the Kubernetes manifests validate offline against the Kubernetes schemas
(kubernetes-validate bundles them), render with `kubectl kustomize` where kubectl exists, and
agree with the programs they run (every probe command is a real subcommand; every config loads).

`kubectl apply --dry-run=client` is not used: even client-side it asks an API server for
discovery, and the test suite has no cluster."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from famfs import config

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = ("namespace.yaml", "configmap.yaml", "daemonset.yaml")


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def daemonsets() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents("daemonset.yaml")}


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_the_kubernetes_schemas(name: str) -> None:
    for doc in documents(name):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomize_renders_every_manifest() -> None:
    assert shutil.which("kubectl"), "kubectl is not installed (make deps installs Debian's kubernetes-client)"
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"}, check=True).stdout
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(rendered) if doc)
    assert kinds == [("ConfigMap", "famfs-agent-config"), ("DaemonSet", "famfs-client"), ("DaemonSet", "famfs-master"),
                     ("Namespace", "famfs")]


def test_master_and_client_differ_only_in_role() -> None:
    sets = daemonsets()
    assert set(sets) == {"famfs-master", "famfs-client"}

    def neutral(doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = ""
        for labels in (doc["metadata"]["labels"], doc["spec"]["selector"]["matchLabels"],
                       doc["spec"]["template"]["metadata"]["labels"]):
            labels["famfs.io/role"] = ""
        pod = doc["spec"]["template"]["spec"]
        pod.pop("nodeSelector", None)
        pod.pop("affinity", None)
        pod["volumes"][0]["configMap"]["items"][0]["key"] = ""
        return doc

    assert neutral(sets["famfs-master"]) == neutral(sets["famfs-client"])


@pytest.mark.parametrize("key", ["master.toml", "client.toml"])
def test_configmap_configs_load(key: str, tmp_path: Path) -> None:
    (configmap,) = documents("configmap.yaml")
    path = tmp_path / key
    path.write_text(configmap["data"][key])
    settings = config.load(str(path))
    assert settings.agent.metrics_address and settings.mount.metrics_address
    # Prometheus scrapes the pod's IP: an address without a host would be the pod's loopback.
    assert {config.parse_address(address)[0] for address in (settings.agent.metrics_address,
                                                              settings.mount.metrics_address)} == {"0.0.0.0"}
    ports = {int(address.rpartition(":")[2]) for address in (settings.agent.metrics_address, settings.mount.metrics_address)}
    declared = {port["containerPort"] for ds in daemonsets().values() for container in ds["spec"]["template"]["spec"]["containers"]
                for port in container["ports"]}
    assert ports == declared


def test_probe_commands_exist() -> None:
    """Every exec probe runs a real subcommand of our programs (its --help exits 0)."""
    bin_dir = Path(sys.executable).parent
    commands = {tuple(probe["exec"]["command"][:2]) for ds in daemonsets().values()
                for container in ds["spec"]["template"]["spec"]["containers"]
                for probe in (container.get(kind) for kind in ("startupProbe", "readinessProbe", "livenessProbe")) if probe}
    assert commands == {("famfs-agent", "health"), ("famfs-fuse-mount", "health")}
    for program, subcommand in commands:
        subprocess.run([str(bin_dir / program), subcommand, "--help"], capture_output=True, timeout=60, check=True)



def test_the_container_build_stage_copies_every_package() -> None:
    """deploy/Containerfile's build stage makes the wheel from the files its COPY lines bring in:
    every package pyproject names must be among them (one left out fails the image's build)."""
    build_stage = (REPO / "deploy" / "Containerfile").read_text().split("\nFROM ")[1]
    copied = {Path(source) for line in build_stage.splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1]}
    assert {"pyproject.toml", "README.md"} <= {str(source) for source in copied}
    with open(REPO / "pyproject.toml", "rb") as pyproject:
        packages = tomllib.load(pyproject)["tool"]["setuptools"]["packages"]
    for package in packages:
        path = Path(*package.split("."))
        assert any(path == source or source in path.parents for source in copied), f"{path} is not copied"
        assert (REPO / path / "__init__.py").exists()
