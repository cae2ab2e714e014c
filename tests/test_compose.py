"""Static checks of docker-compose.yml and docker/: there is no Docker engine here, so these
tests prove that what compose would run exists in the project and that the services agree
on where the shared store lives."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSOLE_SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
CPFLOW_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc or "cpflow" in name]


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(svc: dict) -> dict[str, str]:
    """target path -> source (named volume or host path) for each volume entry."""
    out = {}
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            out[vol["target"]] = vol["source"]
        else:
            source, target = vol.split(":")[:2]
            out[target] = source
    return out


def _dockerfile(svc: dict) -> Path:
    build = svc["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (context / name).resolve()


def _copied_to(dockerfile: Path) -> dict[str, str]:
    """Image path -> project path for each file COPY'd into the image by name."""
    copies: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].upper() != "COPY":
            continue
        args = [p for p in parts[1:] if not p.startswith("--")]
        *sources, dest = args
        for src in sources:
            if dest.endswith("/"):
                copies[dest + Path(src).name] = src
            else:
                copies[dest] = src
    return copies


def _console_script_of_entrypoint(script: Path) -> str:
    """The program a shell entrypoint hands over to with `exec`."""
    execs = [ln.split()[1] for ln in script.read_text().splitlines() if ln.startswith("exec ")]
    assert len(execs) == 1, f"{script.name} should end in exactly one exec line"
    return execs[0]


def test_expected_services_exist() -> None:
    assert {"redis", "api", "worker"} <= set(SERVICES)


def test_every_cpflow_service_runs_a_real_entry_point() -> None:
    assert set(CPFLOW_SERVICES) >= {"api", "worker"}
    for name in CPFLOW_SERVICES:
        svc = SERVICES[name]
        entry = _as_list(svc.get("entrypoint")) or _as_list(svc.get("command"))
        assert entry, f"{name}: no entrypoint or command"
        program = entry[0]
        if program in CONSOLE_SCRIPTS:
            continue
        # Otherwise it must be a file that the service's Dockerfile copies in from the project,
        # and that file must exec a console script of the project.
        copies = _copied_to(_dockerfile(svc))
        assert program in copies, f"{name}: {program} is neither a console script nor COPY'd"
        script = ROOT / copies[program]
        assert script.is_file(), f"{name}: {script} does not exist"
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        target = _console_script_of_entrypoint(script)
        assert target in CONSOLE_SCRIPTS, f"{script.name} execs {target}, not a console script"


def test_api_and_worker_run_serve_and_worker() -> None:
    api = _console_script_of_entrypoint(ROOT / "docker/entrypoint-api.sh")
    worker = _console_script_of_entrypoint(ROOT / "docker/entrypoint-worker.sh")
    assert (api, worker) == ("cpflow-serve", "cpflow-worker")
    assert _as_list(SERVICES["api"]["entrypoint"]) == ["/usr/local/bin/entrypoint-api.sh"]
    assert _as_list(SERVICES["worker"]["entrypoint"]) == ["/usr/local/bin/entrypoint-worker.sh"]


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_script_targets_import(script: str) -> None:
    module, _, attr = CONSOLE_SCRIPTS[script].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the module exists but one of its imports is broken
        pytest.skip(f"{module} is not built yet")
    assert callable(getattr(mod, attr, None)), f"{module}.{attr} is not callable"


def test_dockerfiles_exist_and_copy_existing_paths() -> None:
    seen = set()
    for name in CPFLOW_SERVICES:
        dockerfile = _dockerfile(SERVICES[name])
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        seen.add(dockerfile)
    assert {p.name for p in seen} == {"Dockerfile.cpu", "Dockerfile.cuda"}
    for dockerfile in seen:
        for src in _copied_to(dockerfile).values():
            assert (ROOT / src).exists(), f"{dockerfile.name} copies missing {src}"


def test_cpu_dockerfile_uses_the_pinned_torch() -> None:
    pins = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1
    version = pins[0].split("==")[1].strip()
    text = (ROOT / "docker/Dockerfile.cpu").read_text()
    assert "FROM python:3.11-slim" in text
    assert f"torch=={version} --index-url https://download.pytorch.org/whl/cpu" in text


def test_cuda_dockerfile_keeps_the_base_image_torch() -> None:
    text = (ROOT / "docker/Dockerfile.cuda").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text)
    assert base and base.group(1).startswith("pytorch/pytorch:") and "cuda" in base.group(1)
    assert "pip install --no-deps ." in text
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker/requirements_without_torch.py"), "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in out}
    assert "torch" not in names
    expected = {
        re.match(r"[A-Za-z0-9._-]+", d).group(0).lower()
        for d in PYPROJECT["project"]["dependencies"]
    } - {"torch"}
    assert names == expected


def test_store_volume_is_mounted_where_store_dir_points() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    sources = set()
    for name in CPFLOW_SERVICES:
        svc = SERVICES[name]
        store_dir = _env(svc).get("CPFLOW_STORE_DIR")
        assert store_dir, f"{name}: CPFLOW_STORE_DIR not set"
        mounts = _mounts(svc)
        assert store_dir in mounts, f"{name}: nothing mounted at {store_dir}"
        assert mounts[store_dir] in declared, f"{name}: store is not a named volume"
        sources.add(mounts[store_dir])
    assert len(sources) == 1, f"services use different store volumes: {sources}"


def test_services_reach_redis_by_service_name() -> None:
    for name in CPFLOW_SERVICES:
        url = _env(SERVICES[name]).get("CPFLOW_REDIS_URL", "")
        assert url.startswith("redis://redis:6379"), f"{name}: CPFLOW_REDIS_URL={url!r}"
        assert "redis" in (SERVICES[name].get("depends_on") or {})


def test_redis_persists_append_only_on_a_named_volume() -> None:
    redis = SERVICES["redis"]
    command = _as_list(redis.get("command"))
    assert "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    mounts = _mounts(redis)
    assert mounts.get("/data") in set(COMPOSE.get("volumes") or {})


def test_api_publishes_port_8000_and_checks_healthz() -> None:
    api = SERVICES["api"]
    ports = [str(p) for p in api["ports"]]
    assert any(p.split(":")[-1] == "8000" for p in ports)
    check = " ".join(_as_list(api["healthcheck"]["test"]))
    assert "127.0.0.1:8000/healthz" in check


def test_worker_reserves_one_gpu() -> None:
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["count"] == 1
    assert devices[0]["capabilities"] == ["gpu"]


def test_dockerignore_keeps_local_state_out_of_images() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "var"} <= ignored


def test_dockerfiles_copy_every_package_of_the_distribution() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*").rstrip(".") for p in patterns}
    assert packages and all((ROOT / p / "__init__.py").is_file() for p in packages)
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        copied = set(_copied_to(ROOT / "docker" / name).values())
        missing = packages - copied
        assert not missing, f"{name} does not COPY {sorted(missing)}"


def test_serving_processes_get_the_benchmarked_malloc_settings() -> None:
    """Both images and scripts/up.sh set what the malloc_tuning benchmark measures as
    ``tuned`` (bench/suites/service.py)."""
    from bench.suites.service import TUNED

    up = (ROOT / "scripts/up.sh").read_text()
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "docker" / name).read_text()
        for var, value in TUNED.items():
            assert f"{var}={value}" in text, f"{name} lacks {var}={value}"
    for var, value in TUNED.items():
        assert f'export {var}="${{{var}:-{value}}}"' in up


def test_the_object_store_override_points_every_cpflow_service_at_minio() -> None:
    """docker-compose.s3.yml: a MinIO service and its bucket, and the API and workers on
    s3:// with the endpoint, credentials and a cache folder of their own."""
    override = yaml.safe_load((ROOT / "docker-compose.s3.yml").read_text())
    services = override["services"]
    minio = services["minio"]
    assert "9000:9000" in minio["ports"] and minio["command"][0] == "server"
    user = minio["environment"]["MINIO_ROOT_USER"]
    bucket_cmd = " ".join(services["minio-bucket"]["entrypoint"])
    for name in CPFLOW_SERVICES:
        env = _env(services[name])
        url = env["CPFLOW_STORE_URL"]
        assert url.startswith("s3://") and f"store/{url[5:].split('/')[0]}" in bucket_cmd
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == user
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
        cache = env["CPFLOW_CACHE_DIR"]
        assert any(m.endswith(":" + cache) for m in services[name]["volumes"]), name
        assert services[name]["depends_on"]["minio-bucket"]["condition"].startswith("service_")
    volumes = {m.split(":")[0] for name in CPFLOW_SERVICES for m in services[name]["volumes"]}
    assert len(volumes) == len(CPFLOW_SERVICES)  # each service its own cache
    assert volumes <= set(override["volumes"])
