"""Data: readers (IDX, CIFAR-10, .npz, image folders), a registry of named sets, a synthetic
set, and a DataLoader that keeps the whole set on the training device (with augmentation there)."""
from .augment import RandomAugment
from .dataset import Dataset, load_dataset, split_validation
from .folder import read_image, read_image_folder
from .loader import DataLoader
from .readers import (DataFormatError, read_cifar10_batch, read_idx, read_idx_dir, read_npz,
                      read_npz_split, write_idx)
from .registry import (DATASETS, ChecksumError, DatasetNotFound, cache_dir, dataset_status,
                       download_dataset, locate_dataset)
from .synthetic import make_synthetic

__all__ = ["Dataset", "load_dataset", "split_validation", "DataLoader", "DataFormatError",
           "read_idx", "write_idx", "read_cifar10_batch", "read_npz", "read_npz_split",
           "read_idx_dir", "read_image", "read_image_folder", "RandomAugment", "DATASETS",
           "ChecksumError", "DatasetNotFound", "cache_dir", "dataset_status", "download_dataset",
           "locate_dataset", "make_synthetic"]
