"""Shard folders that live elsewhere: a URL (or a command) in place of a local folder.

A shard root (``--shards``, ``data.root``) may be

* a local folder (``data/shards/scannet``);
* an ``http://`` / ``https://`` URL of a folder served as files (read with ``curl``, as
  webdataset does): ``https://host/shards/scannet``;
* ``gs://bucket/prefix`` (read with ``gsutil cat``, webdataset's ``gs`` scheme);
* ``s3://bucket/prefix`` (read with ``aws s3 cp <url> -``);
* ``pipe:<command>`` whose command contains ``{}``, replaced by the file's path relative to the
  root, for any other store: ``pipe:rclone cat remote:shards/{}``.

The manifest is read from the same place (``<root>/manifest.json``) and shard paths in it are taken
relative to the root, so a folder written by ``data_prep/make_shards.py`` can be copied to any of these
as it is. A shard whose transfer fails (missing, refused, connection dropped mid-shard) is skipped and
named like a corrupt local shard (:class:`ffsplat.data.shards.CorruptCounter`).
"""

from __future__ import annotations

import shlex

import webdataset as wds

SCHEMES = ("http://", "https://", "s3://", "gs://")


def is_remote(root: object) -> bool:
    """Whether ``root`` names a shard folder that is not a local path."""
    text = str(root)
    return text.startswith(SCHEMES) or text.startswith("pipe:")


def check_remote_root(root: str) -> None:
    """Raise ``ValueError`` naming the root when it cannot work (a ``pipe:`` without ``{}``)."""
    if root.startswith("pipe:") and "{}" not in root:
        raise ValueError(f"shard root {root!r}: a pipe: root needs {{}} where the file's relative path goes")


def join(root: str, relative: str) -> str:
    """Location of ``relative`` (``manifest.json``, a shard path) under a remote ``root``."""
    check_remote_root(root)
    if root.startswith("pipe:"):
        return root.replace("{}", shlex.quote(relative))
    return root.rstrip("/") + "/" + relative.lstrip("/")


def stream_url(url: str) -> str:
    """The URL webdataset opens for a location: ``s3://`` through the AWS CLI, the others as they are."""
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {shlex.quote(url)} -"
    return url


def read_bytes(url: str) -> bytes:
    """The whole content at ``url`` (a :func:`join` result); ``FileNotFoundError`` naming it if the
    transfer fails (missing, refused, cut short)."""
    try:
        with wds.gopen(stream_url(url), "rb") as stream:
            data = stream.read()
    except Exception as exc:  # curl/gsutil/aws exit statuses surface as various exception types
        raise FileNotFoundError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    return data


def shard_root(text: str):
    """argparse ``type`` for ``--shards``: a URL or ``pipe:`` root kept as text, anything else a ``Path``
    (``Path`` would fold ``https://`` into ``https:/``)."""
    from pathlib import Path

    if is_remote(text):
        check_remote_root(text)
        return text
    return Path(text)
