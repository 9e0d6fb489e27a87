"""Fingerprints for the caches that reuse a day's stored features and scores.

A stored result may be reused only while everything it is a function of is unchanged:
the code that computed it (:func:`source_version`) and its input rows
(:func:`frame_digest`, or ``warehouse.content_hash_sql`` for rows still in the warehouse).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from functools import lru_cache

import numpy as np
import pandas as pd


@lru_cache(maxsize=None)
def source_version(*module_names: str) -> str:
    """A hash of these modules' source: a code change never reuses results of the old code."""
    sources = "".join(inspect.getsource(importlib.import_module(name)) for name in module_names)
    return hashlib.sha256(sources.encode()).hexdigest()[:16]


def frame_digest(frame: pd.DataFrame | pd.Series) -> str:
    """Names, length and two order-sensitive folds of the row hashes of ``frame``."""
    values = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    names = ",".join(map(str, frame.columns)) if isinstance(frame, pd.DataFrame) else str(frame.name)
    folded = int(np.bitwise_xor.reduce(values)) if len(values) else 0
    return f"{names}:{len(values)}:{int(values.sum(dtype='uint64')):x}:{folded:x}"
