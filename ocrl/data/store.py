"""On-disk store of rollouts: a manifest plus one file per episode.

Layout::

    DIR/manifest.json                 format, env id and kwargs, seed, policy, frame shape,
                                      action space, ground-truth keys, list of episodes
    DIR/episodes/episode-000000.npz   episode 0 (reset with seed ``seed + 0``)

An episode of T steps holds T + 1 frames (the reset frame, then one per step) and T actions,
rewards, terminated and truncated flags: step t leads from frame t to frame t + 1.

Episode files are uncompressed npz zips of ``.npy`` members (``np.load(path,
allow_pickle=False)`` reads them; nothing is ever pickled). They are written with fixed zip
timestamps, so an episode's file depends only on its content. Per-frame image-like fields
(``frames``, ground-truth ``masks`` and ``depth``) are stored as one zlib stream per frame, in
four members ``<field>.data`` (all streams, uint8), ``<field>.offsets`` (int64, frames + 1),
``<field>.shape`` and ``<field>.dtype``; a reader reads and decompresses only the frames it
returns. Ground-truth object arrays (``object_position``, ...) are padded to the episode's
largest object count with NaN (``""`` for ``object_shape``); ``object_count`` (T + 1,) says
how many rows of each frame are objects.

Writes are atomic (temp file in the same directory, fsync, ``os.replace``). The manifest is a
cache of what the episode files say: opening a store re-indexes any episode file that the
manifest misses (a crash between the two writes), so an interrupted collection loses only the
episodes in flight. Truncated or corrupt files raise :class:`~ocrl.errors.CorruptFileError`
naming the file.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import time
import tokenize
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ocrl.envs.ground_truth import FRAME_KEYS, OBJECT_KEYS
from ocrl.errors import CorruptFileError, OcrlError
from ocrl.files import TEMP_SUFFIX, write_atomically
from ocrl.version import library_version

FORMAT_NAME = "ocrl-rollouts"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
EPISODE_DIR = "episodes"
# fields of the manifest that say what the episodes are; appending needs them all to agree
HEADER_KEYS = ("env_id", "env_kwargs", "seed", "policy", "frame_source", "frame_shape", "action_space", "ground_truth")

_EPISODE_NAME = re.compile(r"episode-(\d+)\.npz")
_ZLIB_LEVEL = 1  # level 6 saves only ~10% on rendered frames and is 3x slower
_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the zip epoch: files depend on content only
# dtypes a per-frame blob may have (little-endian); anything else means a corrupt file
_BLOB_DTYPES = ("|u1", "<i4", "<f4")
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length


def episode_file_name(index: int) -> str:
    return f"episode-{index:06d}.npz"


@dataclass(frozen=True)
class EpisodeRecord:
    """What the manifest says about one episode; ``file`` is relative to the store directory."""

    index: int
    file: str
    seed: int
    length: int
    episode_return: float

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": self.file,
            "seed": self.seed,
            "length": self.length,
            "return": self.episode_return,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> EpisodeRecord:
        return cls(
            int(entry["index"]), str(entry["file"]), int(entry["seed"]), int(entry["length"]), float(entry["return"])
        )


# --- writing -----------------------------------------------------------------------------------


def _save_npz(file: io.BufferedWriter, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed timestamps (numpy stamps the current time into every member)."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIMESTAMP), buffer.getvalue())


def _encode_per_frame(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """(n, ...) array -> the four members of a per-frame zlib blob."""
    streams = [zlib.compress(np.ascontiguousarray(value).tobytes(), _ZLIB_LEVEL) for value in values]
    offsets = np.zeros(len(streams) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(stream) for stream in streams])
    return {
        f"{name}.data": np.frombuffer(b"".join(streams), dtype=np.uint8),
        f"{name}.offsets": offsets,
        f"{name}.shape": np.array(values.shape, dtype=np.int64),
        f"{name}.dtype": np.array(values.dtype.str),
    }


def _pack_ground_truth(per_frame: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-frame ground-truth dicts (T + 1 of them) -> episode arrays, object arrays padded."""
    members: dict[str, np.ndarray] = {}
    for key in keys:
        missing = [t for t, frame in enumerate(per_frame) if frame is None or key not in frame]
        if missing:
            raise OcrlError(f"the env gave no ground-truth {key!r} at frame {missing[0]} but did at others")
    if "masks" in keys:
        masks = np.stack([np.asarray(frame["masks"], dtype=np.int32) for frame in per_frame])
        fits_uint8 = masks.size == 0 or (masks.min() >= 0 and masks.max() < 256)
        members.update(_encode_per_frame("masks", masks.astype(np.uint8) if fits_uint8 else masks))
    if "depth" in keys:
        members.update(
            _encode_per_frame("depth", np.stack([np.asarray(frame["depth"], dtype=np.float32) for frame in per_frame]))
        )
    object_keys = [key for key in keys if key in OBJECT_KEYS]
    if not object_keys:
        return members
    counts = np.array([len(frame[object_keys[0]]) for frame in per_frame], dtype=np.int64)
    most = int(counts.max())
    for key in object_keys:
        rows = [frame[key] for frame in per_frame]
        if any(len(row) != count for row, count in zip(rows, counts)):
            raise OcrlError(f"ground-truth {key!r} and {object_keys[0]!r} disagree on the number of objects")
        if key == "object_shape":
            width = max([1] + [len(str(name)) for row in rows for name in row])
            padded = np.full((len(rows), most), "", dtype=f"<U{width}")
        else:
            tail = np.asarray(rows[0], dtype=np.float32).shape[1:]
            padded = np.full((len(rows), most, *tail), np.nan, dtype=np.float32)
        for t, row in enumerate(rows):
            padded[t, : len(row)] = np.asarray(row, dtype=padded.dtype)
        members[key] = padded
    members["object_count"] = counts
    return members


def write_episode(
    path: Path,
    index: int,
    seed: int,
    frames: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    ground_truth: Sequence[dict[str, Any]] | None = None,
    ground_truth_keys: Sequence[str] = (),
) -> None:
    """Write one episode file atomically.

    ``frames`` (T + 1, H, W, 3) uint8; ``actions`` (T, ...); ``rewards``, ``terminated``,
    ``truncated`` (T,); ``ground_truth`` T + 1 per-frame dicts holding ``ground_truth_keys``.
    """
    length = len(actions)
    if len(frames) != length + 1 or not len(rewards) == len(terminated) == len(truncated) == length:
        raise ValueError(f"episode of {length} actions needs {length + 1} frames and {length} rewards and flags")
    members = {
        "index": np.array(index, dtype=np.int64),
        "seed": np.array(seed, dtype=np.int64),
        **_encode_per_frame("frames", np.asarray(frames, dtype=np.uint8)),
        "actions": np.asarray(actions),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminated": np.asarray(terminated, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
    }
    if ground_truth_keys:
        if ground_truth is None or len(ground_truth) != length + 1:
            raise ValueError(f"ground truth needs one dict per frame ({length + 1})")
        members.update(_pack_ground_truth(ground_truth, ground_truth_keys))
    write_atomically(path, lambda file: _save_npz(file, members))


# --- reading -----------------------------------------------------------------------------------

# what parsing a damaged file raises (found by flipping each bit of a file in turn): zipfile's
# own errors, RuntimeError for a flipped "encrypted" flag, TokenError from a garbled npy header
PARSE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    ValueError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    struct.error,
    tokenize.TokenError,
)


class EpisodeFile:
    """Read access to one episode file: whole members, and frame ranges of per-frame blobs."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            raise CorruptFileError(f"{path}: episode file is missing") from None
        try:
            self._zip = zipfile.ZipFile(self._file)
        except PARSE_ERRORS as error:
            self._file.close()
            raise CorruptFileError(f"{path}: not a readable episode file ({error})") from None
        self._layouts: dict[str, tuple[np.ndarray, np.dtype, np.ndarray, int]] = {}

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def has(self, name: str) -> bool:
        return f"{name}.npy" in self._zip.NameToInfo

    def array(self, name: str) -> np.ndarray:
        """A whole member; zip checks its CRC since it is read to the end."""
        try:
            raw = self._zip.read(f"{name}.npy")
            return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        except KeyError:
            raise CorruptFileError(f"{self.path}: member {name!r} is missing") from None
        except PARSE_ERRORS as error:
            raise CorruptFileError(f"{self.path}: member {name!r} is corrupt ({error})") from None

    def per_frame(self, name: str, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of per-frame blob ``name``, (stop - start, ...) of its dtype."""
        shape, dtype, offsets, data_start = self._layout(name)
        first, last = int(offsets[start]), int(offsets[stop])
        # pread: no shared file position, so reads never disturb each other
        raw = os.pread(self._file.fileno(), last - first, data_start + first)
        frame_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        values = np.empty((stop - start, *shape[1:]), dtype=dtype)
        for k in range(stop - start):
            stream = raw[int(offsets[start + k]) - first : int(offsets[start + k + 1]) - first]
            # bounded: a corrupt or hostile stream must not expand to more than a frame's bytes
            decompressor = zlib.decompressobj()
            try:
                decoded = decompressor.decompress(stream, max(1, frame_bytes))  # 0 would mean no limit
            except zlib.error as error:
                decoded, reason = b"", str(error)
            else:
                if decompressor.unconsumed_tail or not decompressor.eof:
                    reason = f"does not decompress to exactly {frame_bytes} bytes"
                    decoded = b""
                else:
                    reason = f"{len(decoded)} bytes, expected {frame_bytes}"
            if len(decoded) != frame_bytes:
                raise CorruptFileError(f"{self.path}: frame {start + k} of {name!r} is corrupt ({reason})")
            values[k] = np.frombuffer(decoded, dtype=dtype).reshape(shape[1:])
        return values

    def frame_count(self, name: str) -> int:
        return int(self._layout(name)[0][0])

    def _layout(self, name: str) -> tuple[np.ndarray, np.dtype, np.ndarray, int]:
        """(shape, dtype, offsets, byte position of the data in the file) of a per-frame blob."""
        if name not in self._layouts:
            shape = self.array(f"{name}.shape")
            dtype_name = str(self.array(f"{name}.dtype"))
            offsets = self.array(f"{name}.offsets")
            sane = (
                dtype_name in _BLOB_DTYPES
                and shape.ndim == 1
                and shape.size >= 1
                and np.all(shape >= 0)
                and offsets.shape == (shape[0] + 1,)
                and offsets[0] == 0
                and np.all(np.diff(offsets) >= 0)
            )
            if not sane:
                raise CorruptFileError(f"{self.path}: layout of {name!r} is corrupt")
            data_start = self._data_start(f"{name}.data", int(offsets[-1]))
            self._layouts[name] = (shape, np.dtype(dtype_name), offsets, data_start)
        return self._layouts[name]

    def _data_start(self, name: str, size: int) -> int:
        """Byte position in the file of the array data of an uncompressed uint8 member."""
        try:
            info = self._zip.getinfo(f"{name}.npy")
            with self._zip.open(info) as member:  # checks the local header's name
                version = np.lib.format.read_magic(member)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }[version]
                shape, fortran_order, dtype = read_header(member)
                header_size = member.tell()
            signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(
                os.pread(self._file.fileno(), _ZIP_LOCAL_HEADER.size, info.header_offset)
            )
        except KeyError:
            raise CorruptFileError(f"{self.path}: member {name!r} is missing") from None
        except PARSE_ERRORS as error:
            raise CorruptFileError(f"{self.path}: member {name!r} is corrupt ({error})") from None
        sane = (
            info.compress_type == zipfile.ZIP_STORED
            and signature == b"PK\x03\x04"
            and dtype == np.uint8
            and shape == (size,)
            and info.file_size == header_size + size
        )
        if not sane:
            raise CorruptFileError(f"{self.path}: member {name!r} is corrupt")
        return info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length + header_size


class _OpenFiles:
    """A few episode files kept open, per process: DataLoader workers fork after the store was
    opened, and zipfile's seek-then-read on an inherited descriptor would race the parent's."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._pid = os.getpid()
        self._files: OrderedDict[Path, EpisodeFile] = OrderedDict()

    def get(self, path: Path) -> EpisodeFile:
        if self._pid != os.getpid():
            self._files, self._pid = OrderedDict(), os.getpid()
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path]
        episode_file = EpisodeFile(path)
        self._files[path] = episode_file
        if len(self._files) > self.capacity:
            self._files.popitem(last=False)[1].close()
        return episode_file

    def close(self) -> None:
        for episode_file in self._files.values():
            episode_file.close()
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        # open files do not travel to spawned DataLoader workers; each opens its own
        return {"capacity": self.capacity, "_pid": None, "_files": OrderedDict()}


class Episode:
    """One stored episode, read lazily: nothing is read or decoded until asked for.

    Frames and ground truth are indexed by frame (``length + 1`` of them); ``actions``,
    ``rewards``, ``terminated`` and ``truncated`` by step (``length``).
    """

    def __init__(self, record: EpisodeRecord, path: Path, files: _OpenFiles, ground_truth_keys: Sequence[str]):
        self.record = record
        self.path = path
        self.index = record.index
        self.seed = record.seed
        self.length = record.length
        self.ground_truth_keys = tuple(ground_truth_keys)
        self._files = files

    def __repr__(self) -> str:
        return f"Episode(index={self.index}, length={self.length}, path={str(self.path)!r})"

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` (Python slice rules), (n, H, W, 3) uint8."""
        start, stop = self._frame_range(start, stop)
        return self._per_frame("frames", start, stop)

    def ground_truth(
        self, start: int = 0, stop: int | None = None, keys: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Ground truth of frames ``start:stop``, n of them, as stored (see module docstring).

        ``masks`` (n, H, W) int32, ``depth`` (n, H, W) float32, ``object_position`` (n, N, 2),
        ``object_size`` / ``object_depth`` (n, N), ``object_colour`` (n, N, 3) float32,
        ``object_shape`` (n, N) str, and with any object key ``object_count`` (n,) int64 (rows
        past it are padding); N is the episode's largest object count. ``keys`` picks some of
        the keys the env gives (default: all); only those are read.
        """
        keys = self.ground_truth_keys if keys is None else tuple(keys)
        unknown = [key for key in keys if key not in self.ground_truth_keys]
        if unknown or not keys:
            raise OcrlError(
                f"{self.path}: no ground truth {unknown or ''} in this store; it has {list(self.ground_truth_keys)}"
            )
        start, stop = self._frame_range(start, stop)
        result: dict[str, np.ndarray] = {}
        for key in keys:
            if key in FRAME_KEYS:
                values = self._per_frame(key, start, stop)
                result[key] = values.astype(np.int32) if key == "masks" else values
            else:
                result[key] = self._per_step(key, self.length + 1)[start:stop]
        if any(key in OBJECT_KEYS for key in keys):
            result["object_count"] = self._per_step("object_count", self.length + 1)[start:stop]
        return result

    @cached_property
    def actions(self) -> np.ndarray:
        """(T, ...) in the action space's dtype."""
        return self._per_step("actions", self.length)

    @cached_property
    def rewards(self) -> np.ndarray:
        """(T,) float64."""
        return self._per_step("rewards", self.length)

    @cached_property
    def terminated(self) -> np.ndarray:
        """(T,) bool."""
        return self._per_step("terminated", self.length)

    @cached_property
    def truncated(self) -> np.ndarray:
        """(T,) bool."""
        return self._per_step("truncated", self.length)

    def _frame_range(self, start: int, stop: int | None) -> tuple[int, int]:
        start, stop, _ = slice(start, stop).indices(self.length + 1)
        return start, max(start, stop)

    def _per_frame(self, name: str, start: int, stop: int) -> np.ndarray:
        episode_file = self._files.get(self.path)
        if episode_file.frame_count(name) != self.length + 1:
            raise CorruptFileError(
                f"{self.path}: {name!r} has {episode_file.frame_count(name)} frames, {self._manifest_says(self.length + 1)}"
            )
        return episode_file.per_frame(name, start, stop)

    def _per_step(self, name: str, count: int) -> np.ndarray:
        values = self._files.get(self.path).array(name)
        if values.ndim == 0 or len(values) != count:
            raise CorruptFileError(f"{self.path}: {name!r} has shape {values.shape}, {self._manifest_says(count)} rows")
        return values

    def _manifest_says(self, count: int) -> str:
        # either file may be the damaged one: the episode file or the manifest's record of it
        return f"but {self.path.parent.parent / MANIFEST_NAME} says episode {self.index} has {count}"


def _record_from_file(store_path: Path, file: str) -> EpisodeRecord:
    """Re-index an episode file that the manifest does not list."""
    episode_file = EpisodeFile(store_path / file)
    try:
        index, seed, rewards = (episode_file.array(name) for name in ("index", "seed", "rewards"))
    finally:
        episode_file.close()
    if index.shape != () or seed.shape != () or rewards.ndim != 1 or Path(file).name != episode_file_name(int(index)):
        raise CorruptFileError(f"{store_path / file}: does not hold the episode its name says")
    return EpisodeRecord(int(index), file, int(seed), len(rewards), float(rewards.sum()))


def read_manifest(path: Path) -> tuple[dict[str, Any], list[EpisodeRecord]]:
    """The manifest's header fields and its episode records, checked."""
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        if not path.exists():
            raise OcrlError(f"{path} does not exist")
        raise OcrlError(f"{path} is not an ocrl rollout store (it has no {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptFileError(f"{manifest_path}: not an {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OcrlError(
            f"{manifest_path}: format version {manifest.get('format_version')}; this ocrl reads {FORMAT_VERSION}"
        )
    try:
        header = {key: manifest[key] for key in HEADER_KEYS}
        records = [EpisodeRecord.from_json(entry) for entry in manifest["episodes"]]
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptFileError(f"{manifest_path}: malformed manifest ({type(error).__name__}: {error})") from None
    unknown = (
        [key for key in header["ground_truth"] if key not in (*FRAME_KEYS, *OBJECT_KEYS)]
        if isinstance(header["ground_truth"], list)
        else ["?"]
    )
    shape = header["frame_shape"]
    if unknown or not (
        isinstance(shape, list)
        and len(shape) == 3
        and shape[2] == 3
        and all(isinstance(size, int) and size > 0 for size in shape)
    ):
        raise CorruptFileError(
            f"{manifest_path}: malformed manifest (ground truth {header['ground_truth']!r}, frame shape {shape!r})"
        )
    return header, records


def check_episode_file(
    path: Path, record: EpisodeRecord, ground_truth_keys: Sequence[str], decode: bool = False
) -> str | None:
    """None if ``path`` holds the episode ``record`` describes, intact; else what is wrong.

    Checks the zip's CRCs (every byte of the file is read), the index, seed and length, and the
    per-frame layouts; with ``decode`` also decompresses every frame and ground-truth array.
    """
    episode = Episode(record, path, _OpenFiles(capacity=1), ground_truth_keys)
    try:
        episode_file = episode._files.get(path)
        try:
            damaged = episode_file._zip.testzip()
        except PARSE_ERRORS as error:
            return f"{path}: not a readable episode file ({error})"
        if damaged is not None:
            return f"{path}: member {damaged!r} fails its CRC check"
        if int(episode_file.array("index")) != record.index or int(episode_file.array("seed")) != record.seed:
            return f"{path}: does not hold episode {record.index} (seed {record.seed})"
        for name in ("actions", "rewards", "terminated", "truncated"):
            episode._per_step(name, record.length)
        episode_file.frame_count("frames")
        if decode:
            episode.frames()
            if ground_truth_keys:
                episode.ground_truth()
        elif record.length + 1 != episode_file.frame_count("frames"):
            return f"{path}: 'frames' has {episode_file.frame_count('frames')} frames, expected {record.length + 1}"
    except CorruptFileError as error:
        return str(error)
    finally:
        episode._files.close()
    return None


def reconcile(
    path: Path, records: Sequence[EpisodeRecord], skip_broken: bool = False
) -> tuple[list[EpisodeRecord], bool]:
    """The manifest's records plus any episode file it misses, sorted by index; and whether any
    were missed. A listed file that is gone is an error; so is an unlisted file that cannot be
    read, unless ``skip_broken`` (a writer, which will write it again)."""
    by_index = {record.index: record for record in records}
    on_disk = {entry.name for entry in os.scandir(path / EPISODE_DIR)} if (path / EPISODE_DIR).is_dir() else set()
    for record in records:
        if record.file != f"{EPISODE_DIR}/{episode_file_name(record.index)}":
            raise CorruptFileError(f"{path / MANIFEST_NAME}: episode {record.index} has file {record.file!r}")
        if Path(record.file).name not in on_disk:
            raise CorruptFileError(f"{path / record.file}: listed in {path / MANIFEST_NAME} but missing")
    listed = {Path(record.file).name for record in records}
    missed = sorted(name for name in on_disk if _EPISODE_NAME.fullmatch(name) and name not in listed)
    for name in missed:
        try:
            record = _record_from_file(path, f"{EPISODE_DIR}/{name}")
        except CorruptFileError:
            if not skip_broken:
                raise
            continue
        by_index[record.index] = record
    return [by_index[index] for index in sorted(by_index)], bool(missed)


class RolloutStore:
    """A rollout store opened for reading. ``store.episode(i)`` is the i-th stored episode in
    order of collection index (equal to its ``index`` unless a collection is unfinished)."""

    def __init__(self, path: Path, header: dict[str, Any], episodes: list[EpisodeRecord]):
        self.path = path
        self.header = header
        self.episodes = episodes
        self._files = _OpenFiles()

    @classmethod
    def open(cls, path: str | os.PathLike) -> RolloutStore:
        path = Path(path)
        header, records = read_manifest(path)
        episodes, _ = reconcile(path, records)
        return cls(path, header, episodes)

    def __len__(self) -> int:
        return len(self.episodes)

    def __repr__(self) -> str:
        return f"RolloutStore({str(self.path)!r}, env_id={self.env_id!r}, episodes={len(self)})"

    @property
    def env_id(self) -> str:
        return self.header["env_id"]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.header["frame_shape"])

    @property
    def ground_truth_keys(self) -> tuple[str, ...]:
        return tuple(self.header["ground_truth"])

    @property
    def num_frames(self) -> int:
        return sum(record.length + 1 for record in self.episodes)

    def episode(self, i: int) -> Episode:
        record = self.episodes[i]
        return Episode(record, self.path / record.file, self._files, self.ground_truth_keys)

    def close(self) -> None:
        self._files.close()


def _manifest_text(manifest: dict[str, Any]) -> str:
    """Indented JSON with one line per episode, so that a manifest of 10k episodes stays legible."""
    header = json.dumps({key: value for key, value in manifest.items() if key != "episodes"}, indent=1)
    episodes = ",\n".join(f"  {json.dumps(entry)}" for entry in manifest["episodes"])
    return f'{header[:-2]},\n "episodes": [\n{episodes}\n ]\n}}\n'


class RolloutWriter:
    """Creates a store, or opens an existing one to append to; one writer per store at a time.

    ``header`` holds :data:`HEADER_KEYS`; an existing store must have the same header (same env,
    kwargs, seed, policy, ...) or :class:`OcrlError` says what differs. A non-empty directory
    without a manifest is refused untouched.
    """

    manifest_interval = 1.0  # seconds between manifest rewrites; the files are the truth anyway

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self.path = Path(path)
        # through JSON once, so that comparisons see what the manifest will hold (lists, not tuples)
        self.header = json.loads(json.dumps({key: header[key] for key in HEADER_KEYS}))
        if (self.path / MANIFEST_NAME).exists():
            existing, records = read_manifest(self.path)
            different = [key for key in HEADER_KEYS if existing[key] != self.header[key]]
            if different:
                details = "; ".join(
                    f"{key}: store has {existing[key]!r}, asked for {self.header[key]!r}" for key in different
                )
                raise OcrlError(f"{self.path} holds a different collection ({details}); use another --out")
            self._remove_temp_files()
            present = [
                record for record in records if (self.path / record.file).is_file()
            ]  # a lost file is written again
            self._problems = [
                f"{self.path / record.file}: listed in {MANIFEST_NAME} but missing"
                for record in records
                if record not in present
            ]
            episodes, missed = reconcile(self.path, present, skip_broken=True)
            self._episodes = {record.index: record for record in episodes}
            self._dirty = missed or len(present) < len(records)
        elif self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise OcrlError(
                f"{self.path} exists and is not an ocrl rollout store (no {MANIFEST_NAME}); refusing to write into it"
            )
        else:
            self._episodes = {}
            self._dirty = True
            self._problems = []
        (self.path / EPISODE_DIR).mkdir(parents=True, exist_ok=True)
        self._last_write = 0.0
        self.write_manifest()

    def __len__(self) -> int:
        return len(self._episodes)

    @property
    def indices(self) -> set[int]:
        """Collection indices already stored."""
        return set(self._episodes)

    def drop_broken(self, decode: bool = False) -> list[str]:
        """Check every stored episode (:func:`check_episode_file`) and forget the broken ones, so
        that they are written again; returns what was wrong with each (listed files that were
        missing included)."""
        problems, self._problems = self._problems, []
        for index, record in sorted(self._episodes.items()):
            problem = check_episode_file(self.path / record.file, record, self.header["ground_truth"], decode=decode)
            if problem is not None:
                problems.append(problem)
                del self._episodes[index]
                self._dirty = True
        self.write_manifest()
        return problems

    def add(
        self, index: int, seed: int, frames, actions, rewards, terminated, truncated, ground_truth=None
    ) -> EpisodeRecord:
        """Write episode ``index`` (arguments as :func:`write_episode`); the manifest follows
        within :attr:`manifest_interval` seconds, or at :meth:`close`."""
        frames = np.asarray(frames)
        if frames.shape[1:] != tuple(self.header["frame_shape"]) or frames.dtype != np.uint8:
            raise OcrlError(
                f"frame of shape {frames.shape[1:]} {frames.dtype}, store holds {self.header['frame_shape']} uint8"
            )
        file = f"{EPISODE_DIR}/{episode_file_name(index)}"
        write_episode(
            self.path / file,
            index,
            seed,
            frames,
            actions,
            rewards,
            terminated,
            truncated,
            ground_truth,
            self.header["ground_truth"],
        )
        record = EpisodeRecord(index, file, seed, len(rewards), float(np.sum(rewards, dtype=np.float64)))
        self._episodes[index] = record
        self._dirty = True
        if time.monotonic() - self._last_write >= self.manifest_interval:
            self.write_manifest()
        return record

    def add_written(self, record: EpisodeRecord) -> None:
        """Register an episode file that :func:`write_episode` already wrote into this store
        (by a worker process, say); the manifest follows as after :meth:`add`."""
        if record.file != f"{EPISODE_DIR}/{episode_file_name(record.index)}" or not (self.path / record.file).is_file():
            raise OcrlError(f"{self.path / record.file}: no episode file {record.index} to register")
        self._episodes[record.index] = record
        self._dirty = True
        if time.monotonic() - self._last_write >= self.manifest_interval:
            self.write_manifest()

    def write_manifest(self) -> None:
        if not self._dirty:
            return
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "ocrl_version": library_version(),
            **self.header,
            "episodes": [self._episodes[index].to_json() for index in sorted(self._episodes)],
        }
        text = _manifest_text(manifest)
        write_atomically(self.path / MANIFEST_NAME, lambda file: file.write(text.encode()))
        self._dirty = False
        self._last_write = time.monotonic()

    def close(self) -> None:
        self.write_manifest()

    def _remove_temp_files(self) -> None:
        """Temp files are what a crash leaves mid-write; their content is lost either way."""
        for directory in (self.path, self.path / EPISODE_DIR):
            if directory.is_dir():
                for entry in directory.iterdir():
                    if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                        entry.unlink()
