#!/usr/bin/python3
"""Stand-in for MinIO's `mc`: the few commands compose.local.yml runs, on any S3 server.

    mc alias set NAME URL ACCESS_KEY SECRET_KEY
    mc ready NAME                                 (exit 0 once the server answers)
    mc mb [--ignore-existing] NAME/BUCKET
    mc anonymous set download NAME/BUCKET[/PREFIX]

`local` is known without an alias: http://localhost:9000 with MINIO_ROOT_USER's keys.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions


def config_path() -> Path:
    return Path(os.environ.get("MC_CONFIG_DIR") or Path.home() / ".mc") / "config.json"


def load_aliases() -> dict[str, dict[str, str]]:
    path = config_path()
    aliases = json.loads(path.read_text()) if path.exists() else {}
    aliases.setdefault(
        "local",
        {
            "url": "http://localhost:9000",
            "access_key": os.environ.get("MINIO_ROOT_USER", "minioadmin"),
            "secret_key": os.environ.get("MINIO_ROOT_PASSWORD", "minioadmin"),
        },
    )
    return aliases


def client(alias: str):
    try:
        found = load_aliases()[alias]
    except KeyError:
        message = f"mc: unknown alias {alias!r} (mc alias set {alias} URL KEY SECRET)"
        raise SystemExit(message) from None
    return boto3.client(
        "s3",
        endpoint_url=found["url"],
        aws_access_key_id=found["access_key"],
        aws_secret_access_key=found["secret_key"],
        region_name="us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, connect_timeout=2, retries={"max_attempts": 1}
        ),
    )


def split_target(target: str) -> tuple[str, str, str]:
    alias, _, path = target.partition("/")
    bucket, _, prefix = path.partition("/")
    if not bucket:
        raise SystemExit(f"mc: expected ALIAS/BUCKET, got {target!r}")
    return alias, bucket, prefix


def alias_set(name: str, url: str, access_key: str, secret_key: str) -> None:
    path = config_path()
    aliases = json.loads(path.read_text()) if path.exists() else {}
    aliases[name] = {"url": url, "access_key": access_key, "secret_key": secret_key}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(aliases, indent=2))
    print(f"Added `{name}` successfully.")


def ready(alias: str) -> None:
    try:
        client(alias).list_buckets()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise SystemExit(f"mc: {alias} is not ready: {exc}") from None
    print(f"The cluster '{alias}' is ready")


def make_bucket(target: str, *, ignore_existing: bool) -> None:
    alias, bucket, _ = split_target(target)
    try:
        client(alias).create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if not (ignore_existing and code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}):
            raise SystemExit(f"mc: cannot create {target}: {code or exc}") from None
    print(f"Bucket created successfully `{target}`.")


def allow_download(target: str) -> None:
    alias, bucket, prefix = split_target(target)
    resource = f"arn:aws:s3:::{bucket}/{prefix.rstrip('/') + '/' if prefix else ''}*"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [resource],
            }
        ],
    }
    client(alias).put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    print(f"Access permission for `{target}` is set to `download`")


def main(args: list[str]) -> None:
    match args:
        case ["alias", "set", name, url, access_key, secret_key]:
            alias_set(name, url, access_key, secret_key)
        case ["ready", alias]:
            ready(alias)
        case ["mb", *flags, target] if set(flags) <= {"--ignore-existing", "-p"}:
            make_bucket(target, ignore_existing=bool(flags))
        case ["anonymous", "set", "download", target]:
            allow_download(target)
        case _:
            raise SystemExit(f"mc stand-in: unsupported command: mc {' '.join(args)}")


if __name__ == "__main__":
    main(sys.argv[1:])
