"""End to end on the copy task: the model, the loss of §5.4 and the schedule of Eq. 3 learn to
copy random symbol sequences, and greedy decoding with the KV cache reproduces held-out ones."""

from __future__ import annotations

import time

import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, load_config
from aiayn.models.transformer import Transformer
from aiayn.training.loss import label_smoothed_cross_entropy
from aiayn.training.schedule import InverseSqrtSchedule

FIRST_SYMBOL, N_SYMBOLS = 4, 20  # ids 4..23; 0..3 are PAD, UNK, BOS, EOS
MIN_LEN, MAX_LEN = 5, 12
BATCH, MAX_STEPS, CHECK_EVERY, FIRST_CHECK = 64, 1500, 100, 400


def copy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random sequences -> src (n, S), src_mask (n, S), tgt_in = BOS + y, tgt_out = y + EOS."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n,), generator=g)
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (n, S)
    src = torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + N_SYMBOLS, mask.shape, generator=g).masked_fill(~mask, PAD_ID)
    tgt_in = torch.cat([torch.full((n, 1), BOS_ID), src], dim=1)
    tgt_out = torch.cat([src, torch.full((n, 1), PAD_ID)], dim=1)
    tgt_out[torch.arange(n), lengths] = EOS_ID
    return src, mask, tgt_in, tgt_out


@torch.no_grad()
def greedy(model: Transformer, src: torch.Tensor, src_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Greedy decoding that feeds one new token at a time through the KV cache."""
    memory, _ = model.encode(src, src_mask)
    cache = model.init_cache(memory, src_mask)
    out = torch.full((src.size(0), 1), BOS_ID)
    for _ in range(max_len):
        logits, cache, _ = model.decode(out[:, -1:], cache=cache)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out[:, 1:]


def sequence_accuracy(model: Transformer, seed: int, n: int) -> float:
    src, src_mask, _, tgt_out = copy_batch(n, torch.Generator().manual_seed(seed))
    hyp = greedy(model.eval(), src, src_mask, tgt_out.size(1))
    real = tgt_out != PAD_ID  # the copy and its EOS; anything after EOS is ignored
    return ((hyp == tgt_out) | ~real).all(dim=1).float().mean().item()


def test_transformer_learns_to_copy() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread, most of all on a shared CPU
    try:
        torch.manual_seed(0)
        cfg = load_config("tiny", overrides=[f"vocab_size={FIRST_SYMBOL + N_SYMBOLS}", "d_model=64", "d_ff=128"])
        model = Transformer(cfg.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        # Peak 0.15 · 64^-0.5 · 100^-0.5 ≈ 1.9e-3: the paper's scale 1 is too hot for 64 dimensions.
        schedule = InverseSqrtSchedule(cfg.model.d_model, warmup_steps=100, scale=0.15)
        g = torch.Generator().manual_seed(1)
        start = time.perf_counter()
        for step in range(1, MAX_STEPS + 1):
            model.train()
            src, src_mask, tgt_in, tgt_out = copy_batch(BATCH, g)
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            loss, _, n_tokens = label_smoothed_cross_entropy(model(src, tgt_in, src_mask), tgt_out, 0.1)
            optimizer.zero_grad()
            (loss / n_tokens).backward()
            optimizer.step()
            # Stop on a validation set, never on the held-out one.
            if step >= FIRST_CHECK and step % CHECK_EVERY == 0 and sequence_accuracy(model, seed=2, n=200) == 1.0:
                break
        train_seconds = time.perf_counter() - start
        accuracy = sequence_accuracy(model, seed=3, n=500)
        print(
            f"copy task: {accuracy:.1%} of 500 held-out sequences after {step} steps, "
            f"{train_seconds:.1f} s training, {time.perf_counter() - start:.1f} s in all"
        )
        assert accuracy >= 0.99
    finally:
        torch.set_num_threads(threads)
