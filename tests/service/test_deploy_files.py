"""The deployment files: docker-compose.yml against the Compose specification's JSON schema (shipped in
tests/service/schemas, so no network and no docker engine), and what the compose file and Dockerfile
promise: no inline database password, an NVIDIA profile with a device reservation, a pinned CANN tag,
a multi-stage image that runs as an unprivileged user without the dev extras and with a C compiler."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("schemas") / "compose-spec.json"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())  # merge keys (<<:) resolved as compose does


def test_compose_file_follows_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    broken = compose()
    broken["services"]["worker"]["deploy"] = {"resources": {"reservations": {"devices": [{"driver": 3}]}}}
    broken["services"]["api"]["restart"] = ["always"]
    assert len(list(validator.iter_errors(broken))) >= 2  # the schema does catch mistakes


def test_compose_keeps_the_database_password_in_an_env_file():
    services = compose()["services"]
    text = (REPO / "docker-compose.yml").read_text()
    assert "PASSWORD" not in "".join(str(s.get("environment", {})) for s in services.values())
    assert not re.search(r"postgresql://[^@\s]*:[^@\s]*@", text)  # no user:password@ in a URL
    for name in ("postgres", "api", "worker", "worker-cuda", "worker-ascend"):
        assert [f["path"] for f in services[name]["env_file"]] == ["postgres.env"], name
    example = (REPO / "postgres.env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example and "PGPASSWORD=" in example
    assert "/postgres.env" in (REPO / ".gitignore").read_text().split()
    assert "postgres.env" in (REPO / ".dockerignore").read_text().split()


def test_compose_gpu_profiles():
    services = compose()["services"]
    cuda = services["worker-cuda"]
    assert cuda["profiles"] == ["nvidia"]
    [device] = cuda["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert cuda["build"]["args"]["EXTRAS"] == "cuda"
    ascend = services["worker-ascend"]
    assert ascend["profiles"] == ["ascend"]
    base = ascend["build"]["args"]["BASE_IMAGE"]
    tag = re.fullmatch(r"\$\{CANN_BASE_IMAGE:-ascendai/cann:([^}]+)\}", base).group(1)
    assert tag != "latest" and re.match(r"\d+\.\d+\.\w+-", tag), tag  # a pinned CANN version
    assert "dev" not in ascend["build"]["args"]["EXTRAS"].split(",")


def test_dockerfile_is_multi_stage_non_root_without_dev_extras():
    text = (REPO / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    assert len(stages) >= 2, stages
    final = lines[stages[-1]:]
    assert any(ln.startswith("COPY --from=build") for ln in final)
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users
    assert any("gcc" in ln for ln in final)  # Triton compiles its launcher with the system C compiler
    assert 'ARG EXTRAS=""' in lines and "[dev" not in text and "dev," not in text
    assert not any(ln.startswith(("RUN", "CMD", "ENTRYPOINT")) for ln in final[final.index(f"USER {users[-1]}"):]
                   if "tinyforge" not in ln)
