"""weir's Python plugin helpers: records and configuration out of the WIT types, and
output batches back in.

componentize-py generates the bindings (`wit_world`) from weir's WIT package; this
module only spares each plugin the columnar batch arithmetic. Include it with
`-p ../../sdk/python` on the componentize-py command line.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple


@dataclass
class Record:
    """One record of a batch."""

    index: int
    key: str
    event_time_ms: int
    payload: bytes
    attributes: Dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed as JSON (raises ValueError if it is not)."""
        return json.loads(self.payload)

    def pane(self) -> Optional[Tuple[int, int, int]]:
        """An aggregator's result's (window start ms, window end ms, revision), from its
        attributes: revision 0 on time, then 1, 2, ... for the revisions late records
        caused. None for a record that is not one."""
        try:
            return (
                int(self.attributes["weir-window-start"]),
                int(self.attributes["weir-window-end"]),
                int(self.attributes["weir-revision"]),
            )
        except (KeyError, ValueError):
            return None


def bad_record(index: int, reason: str) -> Exception:
    """`raise weir.bad_record(record.index, "why")`: the record is at fault; the host sets
    it aside in the dead letters and calls again with the batch's other records."""
    from componentize_py_types import Err
    from wit_world.imports import types

    return Err(types.Error_BadRecord(types.BadRecord(index=index, reason=reason)))


def transient(message: str) -> Exception:
    """`raise weir.transient("why")`: a failure that may pass; the batch is retried after a backoff."""
    from componentize_py_types import Err
    from wit_world.imports import types

    return Err(types.Error_Transient(message))


def failed(message: str) -> Exception:
    """`raise weir.failed("why")`: a failure pinned on no record; the batch is tried again,
    then the stage's on-error policy applies. (`init` raises `Err("why")` with a string.)"""
    from componentize_py_types import Err
    from wit_world.imports import types

    return Err(types.Error_Failed(message))


def records(batch) -> Iterator[Record]:
    """The records of a `types.batch`, in order."""
    attributes: Dict[int, Dict[str, str]] = {}
    for a in batch.attributes:
        attributes.setdefault(a.index, {})[a.name] = a.value
    key_start = 0
    payload_start = 0
    for i, (key_end, payload_end) in enumerate(zip(batch.key_ends, batch.payload_ends)):
        yield Record(
            index=i,
            key=batch.keys[key_start:key_end].decode("utf-8", errors="replace"),
            event_time_ms=batch.event_times[i],
            payload=bytes(batch.payloads[payload_start:payload_end]),
            attributes=attributes.get(i, {}),
        )
        key_start, payload_start = key_end, payload_end


class Config:
    """A stage's `config`: strings arrive verbatim, other TOML values as JSON text."""

    def __init__(self, pairs: List[Tuple[str, str]]):
        self.values = dict(pairs)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.values.get(name, default)

    def get_json(self, name: str, default: Any = None) -> Any:
        """A value given as a TOML array, table, number or boolean (ValueError if malformed)."""
        text = self.values.get(name)
        if text is None:
            return default
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError(f"{name} must be a TOML array, table, number or boolean, not {text}") from None


class BatchBuilder:
    """Collects output records into a `types.batch`."""

    def __init__(self):
        self.keys = bytearray()
        self.key_ends = []
        self.event_times = []
        self.payloads = bytearray()
        self.payload_ends = []

    def push(self, key: str, event_time_ms: int, payload: bytes) -> None:
        self.keys += key.encode("utf-8")
        self.payloads += payload
        self.key_ends.append(len(self.keys))
        self.payload_ends.append(len(self.payloads))
        self.event_times.append(event_time_ms)

    def build(self):
        from wit_world.imports import types

        return types.Batch(
            keys=bytes(self.keys),
            key_ends=self.key_ends,
            event_times=self.event_times,
            payloads=bytes(self.payloads),
            payload_ends=self.payload_ends,
            attributes=[],
        )


def states(flat) -> List[bytes]:
    """The states of a `types.states`, one per group (empty: no records yet)."""
    out, start = [], 0
    for end in flat.ends:
        out.append(bytes(flat.bytes[start:end]))
        start = end
    return out


def pack_states(items: List[bytes]):
    """A `types.states` holding `items`, in order."""
    from wit_world.imports import types

    data, ends = bytearray(), []
    for item in items:
        data += item
        ends.append(len(data))
    return types.States(bytes=bytes(data), ends=ends)
