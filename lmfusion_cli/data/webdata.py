"""Shards from URLs: `pipe:…` commands, `http(s)://…` and brace patterns (`train-{00000..00099}.tar`),
streamed with `webdataset.WebDataset` — no local copy (issue 16).

`encode-latents --data SPEC` takes such a SPEC as well as a folder from `prepare`: several patterns are
joined with `::` (webdataset's convention). Each shard is read once, in order, and every sample is
checked like a local one (`shards.finish_sample`: missing image or caption, bad encoding, bad JSON are
skipped and counted by reason and key); a shard that breaks off (truncated, the command failed, the
server dropped the connection) keeps the samples read before the break and is counted as
`truncated-shard` under its name. A shard's split is its name's prefix (`train-`, `val-`, `test-`),
else its samples' `split` field, else `train`.

Local folders keep the indexed reader of `shards.py`: it finds a cut exactly (webdataset drops the rest
of a truncated shard with one warning) and lets decoding workers seek to each image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmfusion_cli.data.shards import ShardScan, finish_sample

_SCHEMES = ("pipe:", "http://", "https://", "s3://", "gs://", "file:")
_SPLIT = re.compile(r"^(train|val|test)[-_.]")


def is_stream_spec(spec: str) -> bool:
    """True for a URL / command / brace pattern / single .tar; False for a local folder."""
    if Path(spec).is_dir():
        return False
    return spec.startswith(_SCHEMES) or "{" in spec or "::" in spec or spec.endswith(".tar")


def shard_urls(spec: str) -> list[str]:
    """Every shard URL of `spec` (braces expanded, `::`-joined patterns in order)."""
    from webdataset.shardlists import expand_urls

    return list(expand_urls(spec))


def shard_label(url: str) -> str:
    """A readable name for a shard URL: its file name (`train-00003.tar`), or the command."""
    tars = re.findall(r"[^\s;|&'\"]+\.tar\b", url)
    last = tars[-1] if tars else url
    return Path(last.split("?")[0]).name or url


def split_of(url: str, scan: ShardScan) -> str:
    match = _SPLIT.match(shard_label(url))
    if match:
        return match.group(1)
    splits = {s.meta.get("split") for s in scan.samples if isinstance(s.meta, dict)}
    return splits.pop() if len(splits) == 1 and None not in splits else "train"


def stream_shard(url: str) -> ShardScan:
    """Read one shard URL with webdataset's tar reader; samples carry their image bytes.

    The stream is opened and closed here, not left to garbage collection: closing a `pipe:` stream
    waits for its command, so a command that fails after writing part of a shard (curl losing the
    connection) is always counted as `truncated-shard`, however fast the command exits."""
    import webdataset
    from webdataset.tariterators import group_by_keys, tar_file_expander

    label = shard_label(url)
    scan = ShardScan(Path(label))
    errors: list[BaseException] = []

    def keep_going(exn: BaseException) -> bool:  # webdataset's handler: count, then go on
        errors.append(exn)
        return True

    members = 0
    stream = None
    try:
        stream = webdataset.gopen(url)
        source = [{"url": url, "stream": stream}]
        for sample in group_by_keys(tar_file_expander(source, handler=keep_going), handler=keep_going):
            parts: dict[str, Any] = {k: v for k, v in sample.items() if not k.startswith("__")}
            members += len(parts)
            finish_sample(sample["__key__"], parts, scan)
    except Exception as e:  # a break outside webdataset's handler, or the stream would not open
        errors.append(e)
    finally:
        if stream is not None:
            try:
                stream.close()  # a pipe: waits for its command and raises on a failing exit status
            except Exception as e:
                errors.append(e)
    if errors:
        scan.truncated = True
        first = errors[0]
        scan.log.skip(
            label,
            "truncated-shard",
            f"{members} members read before the break ({type(first).__name__}: {str(first)[:200]})",
        )
    return scan
