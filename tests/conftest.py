"""Test settings: two threads, no network, small and deterministic."""
import os
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
