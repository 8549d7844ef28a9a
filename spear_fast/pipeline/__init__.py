"""The offline passes between audio and stored tokens: `collect-frames` (teacher frames for fitting
MVQ), `tokenize` (teacher -> MVQ -> token store), both resumable and shardable, with skip reports;
and `prepare_demo_data`, the embedded default's whole data chain (corpus -> frames -> quantisers ->
tokens). Both passes, and `spear extract` (spear_fast/eval/features.py), run the clip loop of job.py
(decode -> model -> the pass's sink -> skip report). Heavy imports stay inside the functions."""
from .collect import CollectConfig, CollectSummary, collect_frames
from .tokenize import TokenizeConfig, TokenizeSummary, tokenize

__all__ = ["CollectConfig", "CollectSummary", "TokenizeConfig", "TokenizeSummary", "collect_frames", "tokenize"]
