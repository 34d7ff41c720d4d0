"""Supervised fine-tuning of a GPT-NeoX base (Polyglot-ko or `tiny`) on prompt/response records.

Read top to bottom:

1. `FinetuneConfig`: every knob, with per-size defaults (`FinetuneConfig.for_model`).
2. Data: JSONL rows `{"id", "category", "prompt", "response"}` become token ids with labels on the
   response (+ EOS) only.
3. Batching: samples are packed without padding into micro-batches of at most
   `micro_batch_tokens` tokens; position_ids restart at every sample, which makes the attention
   backend (FlashAttention-2 varlen on GPU, SDPA with a block-diagonal mask on CPU) keep samples
   apart. The padded layout is kept as the benchmark baseline (`packing=False`).
4. `train_loop`: a visible loop (nanoGPT style): gradient accumulation, DDP under torchrun, bf16
   autocast, clipping, scheduler, tqdm, checkpoints on an interval and on SIGTERM.
5. Checkpoints: atomic directories (written under a temporary name, then renamed), resume from the
   newest complete one with model, optimizer, scheduler, RNG states and step; the data order is a
   pure function of (seed, epoch), so a resumed run sees exactly the batches an uninterrupted run
   would.
6. `train`: the whole step (load, tokenize, train, save the Model artifact layout), `load_trained`
   and `export_merged` to use the result, a CLI for torchrun, and the thin KFP component.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, get_scheduler

from selfguided.components.data import ARMS if False else None  # noqa: F401  (placeholder removed below)
