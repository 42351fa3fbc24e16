"""Text in, text out: tokenize, batch by length, encode once, search with the KV cache, detokenize.

    translator = Translator.load("runs/demo")            # a run folder or a checkpoint file
    translator.translate(["En el principio creó Dios los cielos y la tierra."])[0][0].text

One sentence's journey: ``Tokenizer.encode_batch`` -> ``batching.source_row`` (subwords + EOS,
as in training) -> ``model.encode`` -> ``search.beam_search`` calling ``make_step_fn``'s
step once per output token -> ``Tokenizer.decode`` of the whole id sequence
(docs/pitfalls.md: "Whole-sequence decoding").
Output length is limited to the source length + ``decode.max_len_offset`` subwords (§6.1: +50).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import torch
from torch import Tensor
from tqdm import tqdm

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, Config, from_dict
from aiayn.data.batching import pad_rows, source_row
from aiayn.data.symbols import open_tokenizer
from aiayn.data.text import arriving_chunks, line_chunks, stream_lines
from aiayn.inference import search
from aiayn.inference.fused import FusedDecoder
from aiayn.inference.quantize import check_quantization, pack_model, quantize_model
from aiayn.inference.search import Hypothesis
from aiayn.models.build import build_model
from aiayn.models.transformer import Transformer
from aiayn.runtime import resolve_device
from aiayn.training.checkpoint import load_for_inference

# Tokens a target can never contain: PAD only fills rows, BOS only starts them.
BANNED = (PAD_ID, BOS_ID)


@dataclass
class Translation(Hypothesis):
    text: str  # detokenized tokens


def _log_probs(logits: Tensor) -> Tensor:
    """(N, V) logits of the newest position -> float32 log-probabilities, banned tokens at -inf."""
    log_probs = logits.float().log_softmax(dim=-1)
    log_probs[:, list(BANNED)] = -float("inf")
    return log_probs


def make_step_fn(
    model: Any,
    memory: Tensor,
    src_mask: Tensor,
    *,
    capacity: int = 0,
    fused: FusedDecoder | None = None,
    hook: Callable[[], None] | None = None,
) -> tuple[Callable[[Tensor, Any], tuple[Tensor, Any]], Any]:
    """A ``search`` step function and its initial state, the decoder cache of one encoded batch
    (``model.init_cache``, room for ``capacity`` steps; whichever cache the network keeps): each
    step feeds only the newest token, whose state is written into the cache; by ``fused.step`` when given, else by
    ``model.decode``. ``hook()`` runs first at every step, inside the search loop, so that what
    it raises stops a search between two steps."""

    def step(prefix: Tensor, cache: Any) -> tuple[Tensor, Any]:
        if hook is not None:
            hook()
        if fused is not None:
            logits, cache = fused.step(prefix[:, -1], cache)  # (N, V)
            return _log_probs(logits), cache
        logits, cache, _ = model.decode(prefix[:, -1:], cache=cache)  # (N, 1, V)
        return _log_probs(logits[:, -1]), cache

    return step, model.init_cache(memory, src_mask, capacity=capacity)


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that rows × longest row ≤ ``batch_tokens`` (at least
    one sentence per batch): similar lengths share a batch and padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class Translator:
    """A model, its tokenizer and its config's decoding settings (§6.1 by default: beam 4, α = 0.6)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: Config,
        device: str | torch.device | None = None,
        *,
        quantize: str | None = None,
    ):
        """``quantize="int8"``: translate with an int8 copy of ``model`` (aiayn.inference.quantize; CPU only).
        The model's weights are read now: a ``Translator`` made before further training would
        translate with the old int8 weights (a float32 one notices, and reads the new ones more
        slowly)."""
        if tokenizer.vocab_size > config.model.vocab_size:
            raise AiaynError(
                f"tokenizer has {tokenizer.vocab_size} pieces but the model only "
                f"{config.model.vocab_size}; use the spm.model the model was trained with"
            )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        check_quantization(quantize, self.device)
        model = model.to(self.device)
        # int8, or float32 on a CPU with the linear weights converted once for oneDNN (aiayn.inference.quantize).
        inference = quantize_model(model, quantize) if quantize is not None else pack_model(model)
        # The decoding step with fewer, larger operators (aiayn.inference.fused), for the Transformer
        # alone (the baselines of models/rnn.py and conv.py decode with their own ``decode``); the
        # encoder, and decoding that asks for attention weights, run the inference copy itself.
        self.fused = FusedDecoder(model, inference, quantize=quantize) if isinstance(model, Transformer) else None
        self.model = inference
        self.tokenizer = tokenizer
        self.config = config
        self.quantize = quantize

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        use_tuned: bool = True,
        *,
        quantize: str | None = None,
    ) -> Translator:
        """From a run folder (its averaged, best or latest checkpoint) or a checkpoint file.
        The decoding settings that ``aiayn tune-decoding`` chose on valid (RUN/decoding.json)
        replace the config's, unless ``use_tuned`` is False. ``quantize="int8"``: int8 linear
        layers, on the CPU (the default device then)."""
        device = resolve_device(device, cpu_only=quantize is not None)
        check_quantization(quantize, device)
        loaded = load_for_inference(path, device, use_tuned=use_tuned)
        return cls(loaded.model, loaded.tokenizer, loaded.config, quantize=quantize)

    @classmethod
    def from_state(
        cls, weights: dict[str, Tensor], config_json: str, run_dir: Path, device: str | torch.device | None = None
    ) -> Translator:
        """From weights in memory (e.g. an average not yet written) and the run's tokenizer."""
        config = from_dict(json.loads(config_json))
        model = build_model(config.model)
        model.load_state_dict(weights)
        return cls(model.to(resolve_device(device)).eval(), open_tokenizer(Path(run_dir)), config)

    def translate(
        self,
        lines: Sequence[str],
        beam_size: int | None = None,
        alpha: float | None = None,
        length_penalty: str | None = None,
        nbest: int | None = None,
        stop: str | None = None,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        batch_tokens: int | None = None,
        seed: int | None = None,
        progress: bool = False,
        step_hook: Callable[[], None] | None = None,
    ) -> list[list[Translation]]:
        """Translate ``lines``; per line, ``nbest`` translations, best first, in input order.

        ``beam_size`` 1 means greedy search; ``stop`` is beam search's stopping rule
        (``search.STOPS``). ``sample`` draws ``nbest`` samples per line instead
        (``seed`` makes them repeatable). ``batch_tokens`` bounds rows × longest source per batch.
        Empty lines give an empty translation; lines longer than the model's positions are
        truncated with a warning. ``step_hook`` is called before every decoding step: what it raises
        ends the call there (aiayn serve stops a request at its time limit, or when its client left).
        """
        d = self.config.decode
        beam_size = d.beam_size if beam_size is None else beam_size
        alpha = d.alpha if alpha is None else alpha
        length_penalty = d.length_penalty if length_penalty is None else length_penalty
        nbest = d.nbest if nbest is None else nbest
        stop = d.stop if stop is None else stop
        if beam_size < 1 or nbest < 1:
            raise AiaynError(f"beam size and nbest must be positive, got beam {beam_size}, nbest {nbest}")
        if sample:
            search.check_sampling(temperature, top_k, top_p)
        elif nbest > beam_size:
            raise AiaynError(f"nbest ({nbest}) cannot exceed the beam size ({beam_size})")
        batch_tokens = batch_tokens or self.config.data.batch_tokens
        limit = self.config.model.max_len  # positions the model has, for the source and for the output

        results: list[list[Translation]] = [[Translation([], 0.0, 0.0, True, "")] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        ids = self.tokenizer.encode_batch([lines[i] for i in todo])
        rows = [source_row(x, limit) for x in ids]
        cut = [todo[k] + 1 for k, x in enumerate(ids) if len(x) + 1 > limit]
        if cut:
            print(
                f"aiayn: warning: {len(cut)} input line(s) longer than the model's {limit} positions were "
                f"truncated (first: line {cut[0]})",
                file=sys.stderr,
            )
        generator = None
        if sample and seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        settings = dict(
            beam_size=beam_size,
            alpha=alpha,
            length_penalty=length_penalty,
            nbest=nbest,
            stop=stop,
            sample=sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            step_hook=step_hook,
        )

        was_training = self.model.training
        if was_training:  # eval() walks every module: a cost per call that one-line requests would feel
            self.model.eval()
        try:
            with (
                torch.inference_mode(),
                tqdm(total=len(lines), unit="sent", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar,
            ):
                bar.update(len(lines) - len(todo))
                for batch in length_batches([len(r) for r in rows], batch_tokens):
                    hyps = self._translate_batch([rows[k] for k in batch], **settings)
                    for k, nb in zip(batch, hyps):
                        results[todo[k]] = [Translation(**vars(h), text=self.tokenizer.decode(h.tokens)) for h in nb]
                    bar.update(len(batch))
        finally:
            if was_training:
                self.model.train()
        return results

    def _translate_batch(
        self,
        rows: list[list[int]],
        beam_size: int,
        alpha: float,
        length_penalty: str,
        nbest: int,
        stop: str,
        sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        generator: torch.Generator | None,
        step_hook: Callable[[], None] | None,
    ) -> list[list[Hypothesis]]:
        d, limit = self.config.decode, self.config.model.max_len
        src, src_mask = pad_rows(rows)  # (B, S) ids, (B, S) True = real token
        lengths = src_mask.sum(dim=1)  # (B,)
        src, src_mask = src.to(self.device), src_mask.to(self.device)
        # Steps count EOS: at most (source subwords) + offset tokens, then EOS.
        max_len = (lengths + d.max_len_offset).clamp(max=limit).to(self.device)
        steps = int(max_len.max())  # the most tokens any search here feeds the decoder
        memory, _ = self.model.encode(src, src_mask)
        fused = self.fused if self.fused is not None and self.fused.current() else None
        B = len(rows)
        if sample:  # nbest independent samples: each sentence's encoder output repeated nbest times
            memory, src_mask, max_len = (x.repeat_interleave(nbest, dim=0) for x in (memory, src_mask, max_len))
            step_fn, state = make_step_fn(self.model, memory, src_mask, capacity=steps, fused=fused, hook=step_hook)
            found = search.sample(
                step_fn, state, B * nbest, BOS_ID, EOS_ID, max_len, temperature, top_k, top_p, generator, d.min_len
            )
            groups = [found[b * nbest : (b + 1) * nbest] for b in range(B)]
            return [sorted(g, key=lambda h: (not h.finished, -h.score)) for g in groups]
        step_fn, state = make_step_fn(self.model, memory, src_mask, capacity=steps, fused=fused, hook=step_hook)
        if beam_size == 1:
            return [[h] for h in search.greedy_search(step_fn, state, B, BOS_ID, EOS_ID, max_len, d.min_len)]
        return search.beam_search(
            step_fn, state, B, BOS_ID, EOS_ID, max_len, beam_size, alpha, length_penalty, d.min_len, nbest, stop=stop
        )


# ---------------------------------------------------------------------------- the command


def format_translations(index: int, translations: list[Translation], nbest: int) -> str:
    """One line per input line, or with ``nbest`` > 1 one ``index<TAB>score<TAB>text`` line per
    hypothesis (index counts input lines from 0, hypotheses best first)."""
    if nbest == 1:
        return translations[0].text + "\n"
    return "".join(f"{index}\t{t.score:.4f}\t{t.text}\n" for t in translations)


def _open_input(path: str | None) -> BinaryIO | None:
    """The --input file opened for reading (None: stdin), before the model loads, so that a wrong
    name is told at once."""
    if not path:
        return None
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise AiaynError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise AiaynError(f"{path}: is a folder, expected a text file") from None
    except OSError as e:
        raise AiaynError(f"{path}: cannot read the input ({e.strerror})") from None


def _open_output(path: str | None) -> TextIO:
    if not path:
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise AiaynError(f"{path}: cannot write the output ({e.strerror})") from None


def run(args: Any) -> None:
    """``aiayn translate``: files or stdin to files or stdout (see cli.py for the options). The
    input is read as it is translated, a chunk at a time (``line_chunks``), never whole."""
    source = _open_input(args.input)
    try:
        _translate_input(args, source)
    finally:
        if source is not None:
            source.close()


def _translate_input(args: Any, source: BinaryIO | None) -> None:
    translator = Translator.load(args.model, args.device, quantize=args.quantize)
    nbest = args.nbest if args.nbest is not None else (1 if args.sample else translator.config.decode.nbest)
    options = dict(
        beam_size=args.beam,
        alpha=args.alpha,
        stop=args.stop,
        nbest=nbest,
        sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        batch_tokens=args.batch_tokens,
        seed=args.seed,
    )
    interactive = source is None and sys.stdin.isatty()
    stream = source is None and not interactive and (args.stream or args.interactive)
    lines = stream_lines(sys.stdin.buffer if source is None else source, args.input or "stdin")
    out = _open_output(args.output)
    try:
        if interactive:
            _interactive(translator, options, nbest, out)
            return
        index, bar = 0, None
        for chunk in arriving_chunks(lines) if stream else line_chunks(lines):
            for t in translator.translate(chunk, **options):
                out.write(format_translations(index, t, nbest))
                index += 1
            if stream:
                out.flush()
            if source is not None:  # shown from the first chunk on: an input refused at once draws no bar
                bar = bar or tqdm(unit="sent", file=sys.stderr, dynamic_ncols=True)
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if hasattr(translator.tokenizer, "report_unknown"):  # a char or symbol vocabulary (aiayn.data.symbols)
            translator.tokenizer.report_unknown(args.input or "stdin")
    finally:
        if out is not sys.stdout:
            out.close()


def _interactive(translator: Translator, options: dict[str, Any], nbest: int, out: TextIO) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print("aiayn: type a sentence and press Enter; Ctrl-D quits", file=sys.stderr)
    index = 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        out.write(format_translations(index, translator.translate([line], **options)[0], nbest))
        out.flush()
        index += 1
