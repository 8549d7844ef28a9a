"""The files `spear export` copies beside model.safetensors so that transformers' AutoModel loads the
folder with trust_remote_code=True. They are self-contained (torch, numpy, transformers): see
spear_fast/integrations/transformers_export.py."""
