"""Reading a sharded checkpoint (``torch.distributed.checkpoint``, DCP) without running code from its files.

DCP unpickles two things when it loads: the ``.metadata`` file (``pickle.load``), and every value of the state
dict that is not a tensor (``torch.load(weights_only=False)``; here the optimizer's hyperparameters). A crafted
file runs whatever code it likes through either. Here the metadata is unpickled with an allow-list of DCP's own
metadata types, and the values with ``weights_only=True`` (plain data only), unless the caller trusts the files.
The tensors DCP reads with ``weights_only=True`` already.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

METADATA_FILE = ".metadata"  # DCP's name for the global metadata a coordinated save writes


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names something loading would have to run as code (outside the allow-list)."""


def _allowed(module: str, name: str) -> Any | None:
    """The object a metadata pickle may name as ``module.name``, or None. Constructing any of these from
    arbitrary arguments only builds a value: DCP's metadata dataclasses and enum, torch's sizes, dtypes and
    layouts, paths (the checkpoint id), and plain containers."""
    if module == dcp_metadata.__name__:
        obj = getattr(dcp_metadata, name, None)
        return obj if isinstance(obj, type) and obj.__module__ == module else None  # defined there, not imported
    if (module, name) == (_StorageInfo.__module__, _StorageInfo.__name__):
        return _StorageInfo
    if module == "torch":
        obj = getattr(torch, name, None)
        return obj if obj is torch.Size or isinstance(obj, torch.dtype) else None
    if (module, name) == ("torch.serialization", "_get_layout"):  # a layout by its name, from torch's own table
        return torch.serialization._get_layout
    if module == "pathlib" or module.startswith("pathlib."):
        obj = getattr(pathlib, name, None)
        return obj if isinstance(obj, type) and issubclass(obj, pathlib.PurePath) else None
    return {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset}.get((module, name))


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        if obj is None:
            raise RefusedPickle(f"it names {module}.{name}, which is not part of DCP's metadata")
        return obj


def read_metadata(dcp_dir: Path, trusted: bool = False) -> Metadata:
    """The metadata of ``dcp_dir``. Unless ``trusted``, unpickled with the allow-list: a ``RefusedPickle`` for
    anything else, before it is built. A ``pickle.UnpicklingError`` too for a file that is not DCP metadata."""
    with open(dcp_dir / METADATA_FILE, "rb") as f:
        metadata = pickle.load(f) if trusted else _MetadataUnpickler(f).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(f"it holds a {type(metadata).__name__}, not DCP's Metadata")
    return metadata


class _VerifiedReader(FileSystemReader):
    """DCP's file reader, handed metadata read already (by :func:`read_metadata`): it never unpickles the
    ``.metadata`` file itself, nor falls back to a rank's own ``__<rank>.metadata`` (which DCP does when
    the global one fails to load)."""

    def __init__(self, dcp_dir: Path, metadata: Metadata) -> None:
        super().__init__(dcp_dir)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self._metadata.storage_meta is None:
            self._metadata.storage_meta = StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id  # as FileSystemReader.read_metadata does
        return self._metadata


class _PlainDataPlanner(DefaultLoadPlanner):
    """DCP's load planner, but the values saved as bytes are read with ``weights_only`` unless ``trusted``."""

    def __init__(self, trusted: bool) -> None:
        super().__init__()
        self.trusted = trusted
        self.loaded_untrusted_data = False  # whether a value needed ``trusted`` to load

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            data = torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            if not self.trusted:
                raise RefusedPickle(f"its value of {read_item.dest_index.fqn} is not plain data") from None
            self.loaded_untrusted_data = True
            value.seek(0)
        else:
            value = io.BytesIO(_saved(data))  # the base class unpickles what it gets: plain data, by now
        super().load_bytes(read_item, value)


def _saved(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def load(state_dict: dict[str, Any], dcp_dir: Path, metadata: Metadata, trusted: bool = False) -> bool:
    """``dcp.load`` of ``state_dict`` (in place) from ``dcp_dir``, whose ``metadata`` came from
    :func:`read_metadata`. A value saved as bytes that is not plain data raises ``RefusedPickle`` (inside DCP's
    ``CheckpointException``), unless ``trusted``: then it loads, and the result says so."""
    planner = _PlainDataPlanner(trusted)
    dcp.load(state_dict, storage_reader=_VerifiedReader(dcp_dir, metadata), planner=planner)
    return planner.loaded_untrusted_data
