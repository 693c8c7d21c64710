"""ptqflow.data: calibration/validation data sources, preprocessing, selection and shard readers.

Other steps use only the readers: ``iter_samples``, ``iter_labeled`` and ``read_index``.
"""

from ptqflow.data.shards import LABELS_KEY, iter_labeled, iter_samples, read_index

__all__ = ["LABELS_KEY", "iter_labeled", "iter_samples", "read_index"]
