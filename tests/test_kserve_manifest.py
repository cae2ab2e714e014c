"""Static checks of deploy/kserve/cpflow.yaml (no Kubernetes here): the ServingRuntime runs a
real console script of this project with options it accepts, listens where its port and probes
say, probes routes the app serves, sets only real settings (with valid values), and the
InferenceService uses that runtime with the v2 protocol."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from service.cli import build_parser
from service.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOCS = list(yaml.safe_load_all((ROOT / "deploy/kserve/cpflow.yaml").read_text()))
BY_KIND = {doc["kind"]: doc for doc in DOCS}
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _container() -> dict:
    (container,) = BY_KIND["ServingRuntime"]["spec"]["containers"]
    return container


def test_runtime_runs_cpflow_serve_on_its_declared_port() -> None:
    runtime = BY_KIND["ServingRuntime"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    container = _container()
    (command,) = container["command"]
    assert command in SCRIPTS and SCRIPTS[command] == "service.cli:main"
    args = build_parser().parse_args(container["args"])  # options cpflow-serve accepts
    (port,) = container["ports"]
    assert args.host == "0.0.0.0" and args.port == port["containerPort"] == 8080


def test_probes_hit_served_routes_and_env_names_real_settings(tmp_path: Path) -> None:
    from service.app import create_app

    container = _container()
    paths = create_app(Settings(store_dir=tmp_path / "store")).openapi()["paths"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths and "get" in paths[get["path"]], get
        assert get["port"] == container["ports"][0]["containerPort"]
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {f"CPFLOW_{name.upper()}": name for name in Settings.model_fields}
    assert set(env) <= set(fields), sorted(set(env) - set(fields))
    Settings(**{fields[k]: v for k, v in env.items()})  # every value is valid
    assert env["CPFLOW_STORE_DIR"] == "/mnt/models"  # where KServe puts storageUri


def test_inference_service_uses_the_runtime() -> None:
    service = BY_KIND["InferenceService"]
    model = service["spec"]["predictor"]["model"]
    runtime = BY_KIND["ServingRuntime"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
