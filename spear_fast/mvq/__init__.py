"""MVQ: the multi-codebook quantiser whose tokens are SPEAR's targets (SPEAR.md section 3)."""
from .frame_store import FrameStore, FrameStoreWriter
from .quantizer import Quantizer, QuantizerConfig
from .trainer import QuantizerTrainer, TrainerConfig

__all__ = ["FrameStore", "FrameStoreWriter", "Quantizer", "QuantizerConfig", "QuantizerTrainer", "TrainerConfig"]
