"""Read the records of an offline W&B run file (``run-<id>.wandb``) back, for tests.

The file is W&B's private LevelDB-log framing (checked against wandb 0.31): a 7-byte header (``:W&B``, magic,
version), then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type: full / first / middle /
last) and a serialized ``wandb_internal_pb2.Record``. W&B ships no public reader for it in 0.31.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2

FILE_HEADER = 7
BLOCK = 32 * 1024
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    offset, pending = FILE_HEADER, b""
    while offset + RECORD_HEADER <= len(data):
        space = BLOCK - offset % BLOCK
        if space < RECORD_HEADER:
            offset += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + RECORD_HEADER])
        chunk = data[offset + RECORD_HEADER : offset + RECORD_HEADER + length]
        offset += RECORD_HEADER + length
        if kind == 0 and length == 0:
            offset += BLOCK - offset % BLOCK if offset % BLOCK else 0
            continue
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    records = []
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def logged_values(run_dir: Path) -> dict[str, Any]:
    """Every history and summary value of the offline run(s) under ``run_dir``, decoded from JSON."""
    values: dict[str, Any] = {}
    for path in sorted(run_dir.rglob("run-*.wandb")):
        for record in read_records(path):
            items = []
            if record.HasField("history"):
                items = record.history.item
            elif record.HasField("summary"):
                items = record.summary.update
            for item in items:
                key = item.key or "/".join(item.nested_key)
                values[key] = json.loads(item.value_json)
    return values
