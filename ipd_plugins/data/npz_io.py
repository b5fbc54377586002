"""``.npz`` files <-> :class:`TrajectoryDataset`: every field, the extras and the metadata.

Layout: the arrays under their field names (``observations``, ``actions``, ``rewards``,
``next_observations``, ``terminations``, ``truncations``, ``episode_lengths``, optional
``action_low``/``action_high``), each extra column as ``extras.<key>``, and the scalar metadata
as a JSON string under ``meta_json``. Nothing is pickled: files load with
``allow_pickle=False``. Writes go to a temporary file that is renamed into place.

Files written elsewhere load too when they hold the seven fields (``np.savez`` of plain
arrays; ``meta_json`` and the bounds are optional). The environment (the file's ``env_id`` or
the one passed in) supplies the dims and the action bounds the data is checked against.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ipd_plugins.data import envs
from ipd_plugins.data.dataset import ARRAY_FIELDS, STEP_FIELDS, DatasetError, TrajectoryDataset
from ipd_plugins.data.validate import (
    conform_to_environment,
    named_source,
    require_keys,
    resolve_environment,
)

__all__ = ["save_npz", "load_npz", "NPZ_KEYS", "NPZ_FORMAT"]

NPZ_FORMAT = "ipd-trajectories/1"
NPZ_KEYS = ARRAY_FIELDS
_EXTRA = "extras."


def save_npz(ds: TrajectoryDataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (compressed npz, atomic). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {key: getattr(ds, key) for key in NPZ_KEYS}
    if ds.action_low is not None and ds.action_high is not None:
        arrays["action_low"] = np.asarray(ds.action_low, np.float32)
        arrays["action_high"] = np.asarray(ds.action_high, np.float32)
    arrays.update({f"{_EXTRA}{k}": np.asarray(v) for k, v in ds.extras.items()})
    for key, value in arrays.items():
        if value.dtype == object:
            raise DatasetError(f"{key}: object arrays cannot be saved without pickle")
    meta = {
        "format": NPZ_FORMAT,
        "name": ds.name,
        "env_id": ds.env_id,
        "ref_min_score": ds.ref_min_score,
        "ref_max_score": ds.ref_max_score,
    }
    arrays["meta_json"] = np.asarray(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_npz(
    path: str | os.PathLike, *, env_id: str | None = None, clip_actions: bool = False
) -> TrajectoryDataset:
    """Read an ipd ``.npz`` file (``allow_pickle=False``).

    Missing fields are errors naming the key and the file. ``env_id`` overrides the file's
    (warning when they differ); the dims are checked against that environment's spaces and the
    actions against its action space (else against ``action_low``/``action_high`` stored in
    the file): outside it is an error unless ``clip_actions=True``.
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise DatasetError(f"{src}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DatasetError(f"{src}: not a readable npz file without pickle ({err})") from None
    require_keys(data, NPZ_KEYS, src, "an ipd npz file")
    meta = _meta(data, src)
    env_id, spaces = resolve_environment(env_id, meta.get("env_id"), src)
    ref = (meta.get("ref_min_score"), meta.get("ref_max_score"))
    if ref[0] is None or ref[1] is None:
        ref = envs.ref_scores(env_id) or (None, None)
    arrays = {k: data[k] for k in STEP_FIELDS}
    if arrays["actions"].ndim == 1:
        arrays["actions"] = arrays["actions"].reshape(-1, 1)
    with named_source(src):
        for key in ("observations", "actions"):
            if arrays[key].dtype.kind not in "biuf":
                raise DatasetError(f"{key}: dtype {arrays[key].dtype} is not a real number type")
        arrays["actions"], low, high = conform_to_environment(
            arrays["observations"],
            arrays["actions"],
            env_id=env_id,
            spaces=spaces,
            declared=(data.get("action_low"), data.get("action_high")),
            clip_actions=clip_actions,
            source=src,
        )
        return TrajectoryDataset.from_arrays(
            arrays,
            data["episode_lengths"],
            env_id=env_id,
            name=str(meta.get("name") or path.stem),
            ref_min_score=None if ref[0] is None else float(ref[0]),
            ref_max_score=None if ref[1] is None else float(ref[1]),
            action_low=low,
            action_high=high,
            extras={k[len(_EXTRA) :]: v for k, v in data.items() if k.startswith(_EXTRA)},
        )


def _meta(data: dict[str, np.ndarray], src: str) -> dict:
    """The ``meta_json`` entry as a dict ({} without one); a malformed one is an error."""
    if "meta_json" not in data:
        return {}
    try:
        meta = json.loads(str(data["meta_json"]))
    except ValueError as err:
        raise DatasetError(f"{src}: meta_json is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{src}: meta_json is not a JSON object")
    return meta
