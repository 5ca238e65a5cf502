"""Read each image once per annotation session instead of once per click.

Viewers send every click as a new request naming the image file, and MONAI's ``LoadImaged`` would
decompress the whole volume each time: tens of ms for a small phantom, seconds for a 512² x 300 CT.
``CachedLoadImaged`` keeps recently read volumes in a byte-bounded LRU keyed by the file's path,
size and modification time, so a changed file is read again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from monai.transforms import LoadImaged, MapTransform

from samlabel.inference.tensor_cache import TensorCache


class CachedLoadImaged(MapTransform):
    """``LoadImaged(keys, image_only=True)`` that remembers what it read; the infer tasks only read it."""

    def __init__(self, keys: str, max_bytes: int):
        super().__init__(keys)
        self.load = LoadImaged(keys=keys, image_only=True)
        self.cache = TensorCache(max_bytes)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, str | os.PathLike) or not os.path.isfile(path):
                d[key] = self.load({key: path})[key]  # arrays, URLs: as LoadImaged does, uncached
                continue
            stat = os.stat(path)
            cache_key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
            image = self.cache.get(cache_key)
            if image is None:
                image = self.load({key: path})[key]
                self.cache.put(cache_key, image)
            d[key] = image
        return d
