"""personatune: train a language model to hold a defined persona, with a measured gate after every stage."""

import os

__version__ = "0.1.0"

# transformers >= 5 swaps layers for kernels downloaded from the Hugging Face Hub unless USE_HUB_KERNELS says no. On a
# CUDA GPU, model.train() then fetches 'kernels-community/rotary': offline, stage 5 stopped with "not available in the
# local cache" (measured on an H200, docs/benchmarks.md "The main job on one GPU"); online, it runs Hub code nobody
# pinned. personatune loads plain torch layers unless the user sets USE_HUB_KERNELS=YES.
os.environ.setdefault("USE_HUB_KERNELS", "NO")
