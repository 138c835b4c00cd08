"""Training programs for stnjax: `python -m train.distorted_mnist`, `python -m train.gtsrb`."""
