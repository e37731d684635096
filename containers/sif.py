"""Read a SIF file's global header and descriptors without Apptainer.

Why our own reader: the launcher must refuse a wrong-arch image on a login node or a laptop
where no Apptainer exists, and ``apptainer inspect`` would cost a process start per image.
Layout (SIF v01, little-endian, packed): a 128-byte global header, then fixed-size
585-byte descriptors at ``descriptors_offset``.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from suite_core.errors import UserError

MAGIC = b"SIF_MAGIC\0"
_HEADER = struct.Struct("<32s10s3s3s16s8q")          # launch, magic, version, arch, id, 8 x int64
_DESCR = struct.Struct("<i?IIIqqqqqqq128s384s")      # type, used, id, group, link, off, size, ...
_PART_EXTRA = struct.Struct("<ii3s")                 # fstype, parttype, arch code

ARCH_CODES = {
    "01": "386", "02": "amd64", "03": "arm", "04": "arm64", "05": "ppc64", "06": "ppc64le",
    "07": "mips", "08": "mipsle", "09": "mips64", "10": "mips64le", "11": "s390x", "12": "riscv64",
}
DATATYPES = {
    0x4001: "Def.FILE", 0x4002: "Env.Vars", 0x4003: "JSON.Labels", 0x4004: "FS",
    0x4005: "Signature", 0x4006: "JSON.Generic", 0x4007: "Generic/Raw",
    0x4008: "Cryptographic Message", 0x4009: "SBOM",
}
PARTTYPES = {1: "System", 2: "PrimSys", 3: "Data", 4: "Overlay"}
FSTYPES = {1: "Squashfs", 2: "Ext3", 3: "Archive", 4: "Raw", 5: "Encrypted squashfs"}


@dataclass(frozen=True)
class Descriptor:
    datatype: str
    id: int
    offset: int
    size: int
    name: str
    parttype: str | None = None
    fstype: str | None = None
    arch: str | None = None


@dataclass
class SifInfo:
    path: Path
    arch: str
    id: str
    created: int
    descriptors: list[Descriptor] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    deffile: str | None = None


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_sif(path: str | Path, *, with_labels: bool = True) -> SifInfo:
    """Parse ``path``; raise a one-line UserError if it is missing or not a SIF file."""
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with-block below)
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist",
                        fix="build it (make build IMAGE=...) or point image.sif at a SIF") from None
    except IsADirectoryError:
        raise UserError(f"image path {path} is a directory, not a SIF file",
                        fix="pass the .sif file itself") from None
    except OSError as exc:
        raise UserError(f"cannot read image file {path}: {exc.strerror}",
                        fix="check the file's permissions and the mount") from None
    try:
        with fh:
            return _parse(fh, path, with_labels)
    except OSError as exc:  # a read error mid-file (flaky mount, a seek the file cannot take)
        raise UserError(f"cannot read image file {path}: {exc.strerror or exc}",
                        fix="copy the image again; compare size and checksum") from None


def _corrupt(path: Path, what: str) -> UserError:
    return UserError(f"{path} is a corrupt SIF image: {what}",
                     fix="rebuild it, or copy it again and compare size and checksum")


def _parse(fh, path: Path, with_labels: bool) -> SifInfo:
    """Header, descriptors and (optionally) labels, every offset checked against the file size."""
    import os

    file_size = os.fstat(fh.fileno()).st_size
    head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size or head[32:42] != MAGIC:
        raise UserError(f"{path} is not a SIF image (no SIF_MAGIC header)",
                        fix="rebuild it with apptainer build, or check the file was copied whole")
    (_launch, _magic, _version, arch_raw, ident, created, _mod, _dfree, dtotal, doff, _dlen,
     _dataoff, _datalen) = _HEADER.unpack(head)
    if doff < 0 or dtotal < 0 or dtotal > 1_000_000:
        raise _corrupt(path, f"descriptor table offset {doff} / count {dtotal} in the header")
    descriptors: list[Descriptor] = []
    fh.seek(doff)
    for _ in range(dtotal):
        raw = fh.read(_DESCR.size)
        if len(raw) < _DESCR.size:
            raise UserError(f"{path} is truncated inside its descriptor table",
                            fix="copy the image again; compare size and checksum")
        (dtype, used, did, _grp, _link, off, size, _padded, _c, _m, _uid, _gid, name,
         extra) = _DESCR.unpack(raw)
        if not used:
            continue
        if off < 0 or size < 0:
            raise _corrupt(path, f"descriptor {did} has offset {off} and size {size}")
        if off + size > file_size:
            raise UserError(f"{path} is truncated: descriptor {did} ends at byte {off + size}, the file "
                            f"has {file_size}", fix="copy the image again; compare size and checksum")
        kind = DATATYPES.get(dtype, f"0x{dtype:x}")
        part = fs = parch = None
        if kind == "FS":
            fst, ptype, acode = _PART_EXTRA.unpack_from(extra)
            fs, part = FSTYPES.get(fst, str(fst)), PARTTYPES.get(ptype, str(ptype))
            parch = ARCH_CODES.get(_cstr(acode), "unknown")
        descriptors.append(Descriptor(kind, did, off, size, _cstr(name), part, fs, parch))
    arch = ARCH_CODES.get(_cstr(arch_raw), "unknown")
    prim = [d for d in descriptors if d.parttype == "PrimSys"]
    if prim and prim[0].arch:
        arch = prim[0].arch  # what Apptainer checks before running
    info = SifInfo(path, arch, str(uuid.UUID(bytes=ident)), created, descriptors)
    if with_labels:
        _read_metadata(fh, info)
    return info


def _read_metadata(fh, info: SifInfo) -> None:
    """Labels live in a JSON descriptor (JSON.Labels, or JSON.Generic as Apptainer writes them)."""
    for d in info.descriptors:
        if d.datatype == "Def.FILE" and d.size < 1 << 20:
            fh.seek(d.offset)
            info.deffile = fh.read(d.size).decode("utf-8", "replace")
        if d.datatype in ("JSON.Labels", "JSON.Generic") and d.size < 1 << 20:
            fh.seek(d.offset)
            try:
                data = json.loads(fh.read(d.size).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict):
                # Apptainer 1.2+ writes inspect-metadata.json: {"data": {"attributes": {"labels": ...}}}
                inner = data.get("data")
                attrs = inner.get("attributes", {}) if isinstance(inner, dict) else {}
                if isinstance(attrs, dict) and isinstance(attrs.get("labels"), dict):
                    labels = attrs["labels"]
                else:
                    labels = data.get("labels", data) if isinstance(data.get("labels"), dict) else data
                info.labels.update({str(k): str(v) for k, v in labels.items()
                                    if not isinstance(v, (dict, list))})
