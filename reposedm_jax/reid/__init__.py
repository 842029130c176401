"""Person re-identification with generated training images (paper §4.5, Table 4): ResNet-50, Market-1501's
protocol, training, and the augmentation table."""
