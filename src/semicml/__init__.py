"""semicml: semi-supervised multi-modal segmentation, one network per modality.

Training uses paired multi-modal scans (Semi-CML contrastive mutual learning, then PReL soft
pseudo-label re-learning); at inference each network segments its own modality alone.
"""

__version__ = "0.1.0"
