"""Data: readers and preprocessing (``datasets.py``) and membership splits (``splits.py``).

Pixel conventions (the only place they change): a ``Dataset`` holds raw ``uint8`` images N x H x W x C;
``to_model_input`` turns them into float32 tensors N x C x H' x W' in [-1, 1].
"""

from .datasets import (FASHION_MNIST_CLASSES, Dataset, from_model_output, load_dataset, load_fashion_mnist,
                       load_image_folder, load_npz, to_model_input)
from .splits import MembershipSplit

__all__ = ["Dataset", "MembershipSplit", "load_dataset", "load_fashion_mnist", "load_image_folder", "load_npz",
           "to_model_input", "from_model_output", "FASHION_MNIST_CLASSES"]
