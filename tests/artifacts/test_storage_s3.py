"""Artifacts on S3 through django-storages, against moto's S3 server on 127.0.0.1 (real HTTP,
real boto3 and s3transfer, no mocked client): capture streams in (multipart past 8 MB),
downloads stream out, and a refused capture leaves no object and no open upload behind."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artifacts.models import Artifact
from config.exceptions import TooLarge
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import PNG, capture_file, home_of, plant
from tests.conftest import client_as, streamed

REGION = "us-east-1"
CREDENTIALS = {"access_key": "testing", "secret_key": "testing"}
BASE_DIR = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(moto_url: str, settings: Any) -> Any:
    """A fresh bucket, and the default storage pointed at it the way settings.py does for
    STORAGE_BACKEND=s3."""
    import boto3

    name = f"airlock-{uuid.uuid4().hex[:12]}"
    s3 = boto3.resource(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["access_key"],
        aws_secret_access_key=CREDENTIALS["secret_key"],
    )
    s3.create_bucket(Bucket=name)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": name,
                "endpoint_url": moto_url,
                "region_name": REGION,
                **CREDENTIALS,
                "default_acl": None,
                "querystring_auth": True,
                "file_overwrite": False,
            },
        },
    }
    return s3.Bucket(name)


@pytest.mark.django_db
def test_a_capture_lands_in_the_bucket_and_downloads_stream_back(
    bucket: Any, local_sandboxes: Any, sandbox_run: SandboxRun, api: Any, owner: Any
) -> None:
    path = plant(local_sandboxes, sandbox_run, "artifacts/page.html", b"<html>hi</html>")

    artifact = capture_file(sandbox_run, path)

    [stored] = list(bucket.objects.all())
    assert stored.key == artifact.file.name
    assert stored.key.startswith(f"artifacts/{sandbox_run.workspace_id}/")
    obj = stored.Object()
    assert obj.get()["Body"].read() == b"<html>hi</html>"
    # Fetched straight from the bucket (a presigned URL), it is still not a page.
    assert obj.content_type == "application/octet-stream"

    response: Any = client_as(api, owner).get(f"/api/v1/artifacts/{artifact.pk}/content/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert streamed(response) == b"<html>hi</html>"


@pytest.mark.django_db
def test_a_large_capture_goes_up_in_parts(
    bucket: Any, local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = os.urandom(20 * 1024 * 1024)  # past s3transfer's 8 MB multipart threshold
    (home_of(local_sandboxes, sandbox_run) / "big.bin").write_bytes(data)

    artifact = capture_file(sandbox_run, "/home/user/big.bin")

    obj = bucket.Object(artifact.file.name)
    assert obj.content_length == len(data)
    assert "-" in obj.e_tag  # a multipart ETag: the stream was never read whole into one PUT
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.django_db
@pytest.mark.parametrize("size", [2_000, 12 * 1024 * 1024], ids=["single-put", "multipart"])
def test_a_refused_capture_leaves_no_object_and_no_open_upload(
    bucket: Any, local_sandboxes: Any, sandbox_run: SandboxRun, settings: Any, size: int
) -> None:
    settings.ARTIFACT_MAX_BYTES = size - 1
    (home_of(local_sandboxes, sandbox_run) / "big.bin").write_bytes(b"x" * size)

    with pytest.raises(TooLarge):
        capture_file(sandbox_run, "/home/user/big.bin")

    assert list(bucket.objects.all()) == []
    assert list(bucket.multipart_uploads.all()) == []
    assert Artifact.objects.count() == 0


@pytest.mark.django_db
def test_the_admin_serves_images_from_the_bucket(
    bucket: Any, local_sandboxes: Any, sandbox_run: SandboxRun, client: Any, django_user_model: Any
) -> None:
    artifact = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, "chart.png", PNG))
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", "pw"))

    response = client.get(f"/admin/artifacts/artifact/{artifact.pk}/image/")

    assert response["Content-Type"] == "image/png"
    assert streamed(response) == PNG


def test_settings_select_s3_from_the_environment(moto_url: str, tmp_path: Path) -> None:
    """STORAGE_BACKEND=s3 and the AWS_* variables are all production needs to configure."""
    import boto3

    name = f"airlock-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    env = {
        **os.environ,
        "AIRLOCK_VAR_DIR": str(tmp_path),
        "STORAGE_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": name,
        "AWS_S3_ENDPOINT_URL": moto_url,
        "AWS_S3_REGION_NAME": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    probe = (
        "import django; django.setup()\n"
        "from django.core.files.base import ContentFile\n"
        "from django.core.files.storage import default_storage as s\n"
        "name = s.save('probe/hello.txt', ContentFile(b'hello'))\n"
        "print(type(s._wrapped).__name__, name, s.open(name).read().decode())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["S3Storage", "probe/hello.txt", "hello"]
