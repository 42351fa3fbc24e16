"""The quality peer: a stock Hugging Face ``MarianMTModel`` trained from scratch with the paper's
recipe, on an aiayn data folder, for a wall-clock budget.

What a competent Hugging Face user builds instead of aiayn: MarianMTModel (post-norm,
sinusoidal positions, scaled and three-way tied embeddings, ReLU) of aiayn's ``small`` shape,
label smoothing 0.1, Adam(0.9, 0.98, 1e-9) with a 300-step warmup to 1e-3 and inverse-sqrt
decay, length-bucketed batches of about 6,000 padded source + target tokens, and beam 4 with
Hugging Face's length penalty |Y|^0.6. It reads the data folder's own SentencePiece model, so
both systems see the same subwords and the same splits.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.data.batching import pad_rows

LR, WARMUP, MAX_TOKENS, TRUNCATE = 1e-3, 300, 6000, 200


def marian_small(vocab_size: int) -> Any:
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(
        vocab_size=vocab_size,
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        activation_function="relu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=512,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=EOS_ID,
    )
    return MarianMTModel(cfg)


def padded(rows: list[list[int]]) -> torch.Tensor:
    return pad_rows(rows)[0]  # (B, L)


def token_batches(pairs: list[tuple[list[int], list[int]]], rng: random.Random) -> list[list[int]]:
    """Sort by target length with noise, cut at ``MAX_TOKENS`` padded source + target tokens,
    shuffle the batches."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][1]) + rng.random(), len(pairs[i][0])))
    batches, current, widest = [], [], 0
    for i in order:
        width = max(widest, len(pairs[i][0]) + len(pairs[i][1]))
        if current and width * (len(current) + 1) > MAX_TOKENS:
            batches.append(current)
            current, width = [], len(pairs[i][0]) + len(pairs[i][1])
        current.append(i)
        widest = width
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


@dataclass
class PeerRun:
    model: Any
    steps: int
    epochs: float
    train_seconds: float
    tgt_tokens_per_s: float
    curve: list[dict[str, float]]  # valid NLL every ``eval_every`` updates: step, minutes (training only), nll


def train(
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    vocab_size: int,
    *,
    minutes: float,
    max_steps: int = 0,
    seed: int = 1,
    bf16: bool = False,
    valid: tuple[list[list[int]], list[list[int]]] | None = None,
    eval_every: int = 0,
) -> PeerRun:
    """The peer's loop as in the product side's script; ``bf16`` trains under CPU bf16 autocast
    (Hugging Face ``Trainer(bf16=True)``). With ``valid`` and ``eval_every``, the valid NLL is
    measured every ``eval_every`` updates, off the clock."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pairs = [(s[:TRUNCATE] + [EOS_ID], t[:TRUNCATE] + [EOS_ID]) for s, t in zip(src_ids, tgt_ids)]
    model = marian_small(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / WARMUP, math.sqrt(WARMUP / (s + 1))))
    start = time.monotonic()
    deadline = start + minutes * 60 if minutes else math.inf
    steps = epochs = tokens = 0
    paused, curve = 0.0, []
    model.train()
    bar = tqdm(desc="marian peer", unit="step", total=max_steps or None, dynamic_ncols=True)
    batches, position = token_batches(pairs, rng), 0
    while time.monotonic() < deadline + paused and (not max_steps or steps < max_steps):
        if position == len(batches):
            batches, position, epochs = token_batches(pairs, rng), 0, epochs + 1
        b = batches[position]
        position += 1
        s, t = padded([pairs[i][0] for i in b]), padded([pairs[i][1] for i in b])
        dec_in = torch.cat([torch.full((t.size(0), 1), BOS_ID), t[:, :-1]], 1)  # (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(
                input_ids=s,
                attention_mask=s != PAD_ID,
                decoder_input_ids=dec_in,
                decoder_attention_mask=dec_in != PAD_ID,
            ).logits  # (B, T, V)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), t.reshape(-1), ignore_index=PAD_ID, label_smoothing=0.1
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        steps += 1
        tokens += int((t != PAD_ID).sum())
        bar.update(1)
        if steps % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epochs)
        if valid is not None and eval_every and steps % eval_every == 0:
            pause = time.monotonic()
            minutes_trained = (pause - start - paused) / 60
            curve.append(
                {"step": steps, "minutes": round(minutes_trained, 3), "nll": round(valid_nll(model, *valid), 4)}
            )
            # As aiayn's metrics.csv does: a run stopped early still shows how far it got.
            bar.write(f"marian peer: step {steps}: valid NLL {curve[-1]['nll']:.4f}", file=sys.stderr)
            model.train()
            paused += time.monotonic() - pause
    bar.close()
    seconds = time.monotonic() - start - paused
    model.eval()
    return PeerRun(model, steps, epochs + position / len(batches), seconds, tokens / seconds, curve)


@torch.no_grad()
def valid_nll(model: Any, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> float:
    """Mean negative log-likelihood per target token (EOS included), unsmoothed, in float32."""
    model.eval()
    total = count = 0.0
    order = sorted(range(len(src_ids)), key=lambda i: len(tgt_ids[i]))
    for k in range(0, len(order), 64):
        idx = order[k : k + 64]
        s = padded([src_ids[i][:TRUNCATE] + [EOS_ID] for i in idx])
        t = padded([tgt_ids[i][:TRUNCATE] + [EOS_ID] for i in idx])
        dec_in = torch.cat([torch.full((t.size(0), 1), BOS_ID), t[:, :-1]], 1)
        logits = model(
            input_ids=s, attention_mask=s != PAD_ID, decoder_input_ids=dec_in, decoder_attention_mask=dec_in != PAD_ID
        ).logits
        total += float(
            F.cross_entropy(logits.reshape(-1, logits.size(-1)), t.reshape(-1), ignore_index=PAD_ID, reduction="sum")
        )
        count += int((t != PAD_ID).sum())
    return total / count


@torch.no_grad()
def translate(model: Any, tokenizer: Any, sources: list[str], beam: int = 4, batch: int = 32) -> list[str]:
    """Beam search with Hugging Face ``generate``: length penalty |Y|^0.6, at most source + 50 tokens."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = [""] * len(sources)
    for k in tqdm(range(0, len(order), batch), desc="marian decode", unit="batch", dynamic_ncols=True):
        idx = order[k : k + batch]
        s = padded([(tokenizer.encode(sources[i])[:TRUNCATE] or [PAD_ID + 1]) + [EOS_ID] for i in idx])
        ids = model.generate(
            input_ids=s, attention_mask=s != PAD_ID, num_beams=beam, length_penalty=0.6, max_new_tokens=s.size(1) + 50
        )
        for i, row in zip(idx, ids.tolist()):
            out[i] = tokenizer.decode(row)
    return out


def run(
    data_dir: Path,
    *,
    minutes: float,
    max_steps: int = 0,
    seed: int = 1,
    split: str | None = "test",
    bf16: bool = False,
    eval_every: int = 0,
) -> dict:
    """Train on ``data_dir``'s train split, then decode ``split`` (None: no decoding, the valid
    NLL alone); one result row."""
    from aiayn.data.corpus import read_split
    from aiayn.data.tokenizer import Tokenizer
    from aiayn.evaluation.evaluate import corpus_scores

    tok = Tokenizer.load(data_dir)
    src, tgt = read_split(data_dir, "train")
    vs, vt = read_split(data_dir, "valid")
    valid = (tok.encode_batch(vs), tok.encode_batch(vt))
    peer = train(
        tok.encode_batch(src),
        tok.encode_batch(tgt),
        tok.vocab_size,
        minutes=minutes,
        max_steps=max_steps,
        seed=seed,
        bf16=bf16,
        valid=valid,
        eval_every=eval_every,
    )
    nll = valid_nll(peer.model, *valid)
    if not peer.curve or peer.curve[-1]["step"] != peer.steps:  # as aiayn's last validation: the final model
        peer.curve.append({"step": peer.steps, "minutes": round(peer.train_seconds / 60, 3), "nll": round(nll, 4)})
    row = {
        "system": "hf-marian",
        "precision": "bf16" if bf16 else "fp32",
        "seed": seed,
        "updates": peer.steps,
        "epochs": round(peer.epochs, 2),
        "train_minutes": round(peer.train_seconds / 60, 2),
        "tgt_tok_per_s": round(peer.tgt_tokens_per_s),
        "valid_nll": round(nll, 4),
        "curve": peer.curve,
    }
    if split is None:
        return row
    sources, refs = read_split(data_dir, split)
    start = time.monotonic()
    hyps = translate(peer.model, tok, sources)
    return {**row, "decode_s": round(time.monotonic() - start, 1), "hypotheses": hyps, **corpus_scores(hyps, refs)}
