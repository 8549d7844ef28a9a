"""Adapters for the evaluation harnesses people already run, one module per ecosystem:

    xares_encoder         X-ARES: `SpearEncoder` (passes xares.audio_encoder_checker.check_audio_encoder)
    s3prl_expert          s3prl: `UpstreamExpert(ckpt)` (hidden_states: front end, then every layer)
    s3prl_hubconf         s3prl: hub entries (`spear_fast_local`) for s3prl's hub.py or upstream/ tree
    transformers_export   transformers: the remote-code files `spear export` writes (AutoModel)
    transformers_upstream the `hf:PATH` model spec: any local remote-code transformers folder (e.g.
                          the SPEAR authors' checkpoints) as an Upstream for probe/extract/HEAR
    waveforms             the input checks every adapter shares
    frame_embeddings      one (B, T, D) matrix per clip from any upstream (last layer or all), chunked
The HEAR 2021 API is spear_fast.hear.
"""
