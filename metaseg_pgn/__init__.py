"""metaseg-pgn: pixel-wise gradient norms and segment-level meta-learning for segmentation uncertainty."""

__version__ = "0.1.0"
