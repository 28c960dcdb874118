"""Image datasets for the NPU simulator and QAT library (NumPy only, no torch).

Every dataset is returned as uint8 ``(N, C, H, W)`` images with int64 labels; see
:func:`load_dataset` and :func:`list_datasets`.
"""

from npusim.data.datasets import (
    Dataset,
    DatasetError,
    check_data_spec,
    dataset_fingerprint,
    list_datasets,
    load_dataset,
    parse_data_spec,
)

__all__ = ["Dataset", "DatasetError", "check_data_spec", "dataset_fingerprint", "list_datasets",
           "load_dataset", "parse_data_spec"]
