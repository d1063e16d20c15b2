"""A real S3-protocol server for tests: moto's server mode as a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from service import free_port

BUCKET = "maie-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    # keep the credential chain on the environment: no profile files, no instance-metadata probing
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        )

    def env(self, prefix: str) -> dict[str, str]:
        """Settings for a MAIE process storing audio under ``s3://BUCKET/<prefix>``."""
        return {
            "MAIE_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
            "MAIE_S3__ENDPOINT_URL": self.endpoint,
            "MAIE_S3__REGION": "us-east-1",
            **CREDENTIALS,
        }

    def keys(self, prefix: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
        return [obj["Key"] for obj in listing.get("Contents", [])]

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        return self.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", [])

    def wait_settled(self, prefix: str, keep: list[str], timeout_s: float = 10.0) -> None:
        """Wait until no multipart upload is open under ``prefix`` and exactly ``keep`` is stored there.
        Aborts run in a background thread of the API: allow them a moment, then insist."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sorted(self.keys(prefix)) == sorted(keep) and not self.multipart_uploads(prefix):
                return
            time.sleep(0.1)
        raise AssertionError(f"left in the bucket: {self.keys(prefix)} {self.multipart_uploads(prefix)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_s3_server(log_dir: Path) -> S3Server:
    port = free_port()
    log_path = log_dir / f"moto-{port}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = S3Server(proc=proc, endpoint=f"http://127.0.0.1:{port}", log_path=log_path)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited:\n{log_path.read_text()[-2000:]}")
        try:
            httpx.get(server.endpoint + "/", timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
    server.client().create_bucket(Bucket=BUCKET)
    return server
