"""The wire format of model updates and broadcasts, and the codec protocol.

A payload is self-describing and versioned::

    b"F8W" | version (1 byte) | header length (uint32 LE) | header (UTF-8 JSON) | data | CRC-32 (uint32 LE)

The header names the codec and its parameters and lists every tensor: name, shape,
original dtype, and the byte length of its data section (codec-specific: codes, scales,
indices), in sorted name order so equal inputs give equal bytes. The CRC-32 covers
everything before it. :func:`fed8.compression.decode` (:mod:`.registry`) reads any payload
without knowing which codec wrote it and raises :class:`~fed8.errors.PayloadError` for
a payload that is truncated, corrupted, foreign or from a newer version, never
returning garbage.

A codec implements ``encode(tensors, *, generator=None) -> bytes`` (generator: the
randomness of stochastic rounding, derived from (seed, round, client)) and
``decode(payload) -> tensors`` (its own payloads); :class:`TensorCodec` does the framing so a codec only
writes ``encode_tensor`` / ``decode_tensor`` for one tensor.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Mapping, Protocol

import torch

from ..errors import PayloadError

__all__ = ["Codec", "MAGIC", "TensorCodec", "VERSION", "decode_tensors", "frame", "payload_size", "unframe"]

MAGIC = b"F8W"
VERSION = 1
_PREFIX = len(MAGIC) + 1 + 4  # magic, version, header length
_CRC = 4
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class Codec(Protocol):
    """Anything that turns a dict of tensors into bytes and back."""

    name: str

    def encode(self, tensors: Mapping[str, torch.Tensor], *, generator: torch.Generator | None = None) -> bytes: ...

    def decode(self, payload: bytes) -> dict[str, torch.Tensor]: ...


def _header_bytes(codec: str, params: Mapping[str, Any], entries: list[dict]) -> bytes:
    return json.dumps({"codec": codec, "params": dict(params), "tensors": entries},
                      separators=(",", ":"), sort_keys=True).encode()


def payload_size(codec: str, params: Mapping[str, Any], entries: list[dict]) -> int:
    """Exact payload length for these header entries (each with its ``nbytes``): prefix + header + data + CRC."""
    return _PREFIX + len(_header_bytes(codec, params, entries)) + sum(e["nbytes"] for e in entries) + _CRC


def frame(codec: str, params: Mapping[str, Any], entries: list[dict], chunks: list[bytes]) -> bytes:
    """Assemble a payload; ``entries[i]["nbytes"] == len(chunks[i])``."""
    header = _header_bytes(codec, params, entries)
    body = MAGIC + bytes([VERSION]) + struct.pack("<I", len(header)) + header + b"".join(chunks)
    return body + struct.pack("<I", zlib.crc32(body))


def unframe(payload: bytes) -> tuple[dict, list[bytes]]:
    """Check and split a payload into its header and per-tensor data chunks."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a payload must be bytes; got {type(payload).__name__}.")
    payload = bytes(payload)
    if len(payload) < _PREFIX + _CRC or payload[:3] != MAGIC:
        raise PayloadError(f"not a fed8 payload ({len(payload)} bytes, starts with {payload[:4]!r}; expected "
                           f"{MAGIC!r}): it was written by something else or truncated at the start.")
    if payload[3] != VERSION:
        raise PayloadError(f"payload version {payload[3]} is not supported (this fed8 reads version {VERSION}); "
                           "upgrade fed8 on this side.")
    (crc,) = struct.unpack("<I", payload[-_CRC:])
    if zlib.crc32(payload[:-_CRC]) != crc:
        raise PayloadError(f"payload checksum mismatch ({len(payload)} bytes): it is truncated or corrupted.")
    (hlen,) = struct.unpack("<I", payload[4:8])
    try:
        header = json.loads(payload[_PREFIX : _PREFIX + hlen])
        entries = header["tensors"]
        sizes = [int(e["nbytes"]) for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise PayloadError(f"payload header is unreadable ({e}).") from None
    at, chunks = _PREFIX + hlen, []
    for n in sizes:
        chunks.append(payload[at : at + n])
        at += n
    if at != len(payload) - _CRC:
        raise PayloadError(f"payload data is {len(payload) - _CRC - _PREFIX - hlen} bytes but the header lists "
                           f"{sum(sizes)}; the payload is inconsistent.")
    return header, chunks


class TensorCodec:
    """Base of fed8's codecs: per-tensor encoding, framing and checks shared.

    Subclasses set ``name`` and implement :meth:`layout` (data bytes and header fields
    of a tensor of a given shape: sizes never depend on the values), :meth:`encode_tensor`
    and :meth:`decode_tensor`.
    """

    name = "abstract"

    def params(self) -> dict[str, Any]:
        return {}

    def layout(self, shape: tuple[int, ...]) -> tuple[int, dict]:
        raise NotImplementedError

    def encode_tensor(self, x: torch.Tensor, generator: torch.Generator | None) -> bytes:
        raise NotImplementedError

    def decode_tensor(self, data: bytes, entry: dict, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def _entries(self, tensors: Mapping[str, torch.Tensor]) -> list[dict]:
        entries = []
        for name, t in sorted(tensors.items()):  # canonical order: same bytes whatever the dict order
            dtype = str(t.dtype).removeprefix("torch.")
            if dtype not in _DTYPES:
                raise PayloadError(f"tensor {name!r} has dtype {dtype}; codecs take floating-point tensors "
                                   f"({', '.join(_DTYPES)}).")
            nbytes, extra = self.layout(tuple(t.shape))
            entries.append({"name": name, "shape": list(t.shape), "dtype": dtype, "nbytes": nbytes, **extra})
        return entries

    def size(self, tensors: Mapping[str, torch.Tensor]) -> int:
        """Exact payload length for tensors of these names, shapes and dtypes, without encoding."""
        return payload_size(self.name, self.params(), self._entries(tensors))

    def encode(self, tensors: Mapping[str, torch.Tensor], *, generator: torch.Generator | None = None) -> bytes:
        entries = self._entries(tensors)
        chunks = []
        for e in entries:
            t = tensors[e["name"]]
            if t.numel() == 0:  # nothing to send but the header entry (and a codec's fixed fields)
                data = bytes(e["nbytes"])
            else:
                data = self.encode_tensor(t.detach().to(torch.float32).contiguous(), generator)
            if len(data) != e["nbytes"]:  # a codec bug, never the caller's
                raise AssertionError(f"{self.name}: {len(data)} bytes for {e['name']}, layout says {e['nbytes']}")
            chunks.append(data)
        return frame(self.name, self.params(), entries, chunks)

    def decode(self, payload: bytes) -> dict[str, torch.Tensor]:
        """The tensors of a payload this codec wrote (same name and parameters).

        :func:`fed8.compression.decode` reads a payload of any codec from its header.
        """
        header, chunks = unframe(payload)
        params = header.get("params", {})
        if header["codec"] != self.name or params != json.loads(json.dumps(self.params())):
            raise PayloadError(f"the payload was written by codec {header['codec']!r} with parameters {params}, not "
                               f"by this {self.name!r} codec with {self.params()}. Use fed8.compression.decode("
                               "payload), which reads the codec from the payload's header.")
        return decode_tensors(self, header, chunks)


def decode_tensors(codec: TensorCodec, header: dict, chunks: list[bytes]) -> dict[str, torch.Tensor]:
    """The tensors of an unframed payload (:func:`unframe`), decoded with ``codec``."""
    out = {}
    for entry, data in zip(header["tensors"], chunks):
        shape = tuple(int(d) for d in entry["shape"])
        try:
            if len(data) != codec.layout(shape)[0]:
                raise PayloadError(f"{len(data)} data bytes, the layout of shape {shape} is {codec.layout(shape)[0]}")
            t = torch.zeros(shape) if 0 in shape else codec.decode_tensor(data, entry, shape)
        except (ValueError, RuntimeError, KeyError, IndexError) as e:
            raise PayloadError(f"tensor {entry.get('name')!r} of the {header['codec']} payload cannot be "
                               f"decoded ({e}).") from None
        if tuple(t.shape) != shape:
            raise PayloadError(f"tensor {entry.get('name')!r} decoded to shape {tuple(t.shape)}, header says {shape}.")
        out[entry["name"]] = t.to(_DTYPES.get(entry["dtype"], torch.float32))
    return out
