"""Joint SentencePiece BPE over source and target text, with fixed special ids.

The paper (§5.1) encodes English-German with byte-pair encoding and "a shared source-target
vocabulary of about 37000 tokens"; sharing one vocabulary is what lets §3.4 tie the encoder,
decoder and softmax embeddings. aiayn trains the same kind of model with SentencePiece on the
concatenated training text of both languages.

Every model aiayn trains has the ids of ``aiayn.config``: PAD=0, UNK=1, BOS=2, EOS=3, so the
rest of the code never asks the tokenizer where they are. Normalisation is the identity: the
corpus stage already applies NFC and whitespace cleanup, and an identity model guarantees
``decode(encode(x)) == x`` for such text (NFKC would rewrite "…" or "ﬁ" and break the round trip).

    tok = Tokenizer.train([Path("train.es"), Path("train.en")], Path("data"), vocab_size=8000)
    tok = Tokenizer.load(Path("data"))            # data/spm.model
    tok.decode(tok.encode("En el principio")) == "En el principio"
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, AiaynError

MODEL_NAME = "spm.model"
VOCAB_NAME = "spm.vocab"
SPECIAL_IDS = frozenset((PAD_ID, BOS_ID, EOS_ID))  # removed by decode; UNK stays visible as "⁇"

# Lines sampled for training; the Bible's 60k lines fit, a WMT-sized corpus is subsampled
# (with SentencePiece's generator seeded, so the sample is the same on every run).
INPUT_SENTENCE_SIZE = 2_000_000
TRAIN_SEED = 1


class Tokenizer:
    """A loaded SentencePiece model. Ids never include BOS/EOS: batching adds them."""

    kind = "sentencepiece"  # meta.json's ``tokenizer`` (aiayn.data.symbols has the others)

    def __init__(self, model_path: Path):
        self.model_path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise AiaynError(
                f"{self.model_path}: special ids (pad, unk, bos, eos) are {ids}, expected "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; retrain it with `aiayn prepare`"
            )

    @classmethod
    def train(cls, files: Sequence[Path], out_dir: Path, vocab_size: int = 8000) -> Tokenizer:
        """Train a joint BPE model on ``files`` and write ``out_dir/spm.model`` and ``spm.vocab``."""
        files = [Path(f) for f in files]
        for f in files:
            if not f.is_file():
                raise AiaynError(f"{f}: training text not found")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        prefix = out_dir / Path(MODEL_NAME).stem
        spm.set_random_generator_seed(TRAIN_SEED)
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(str(f) for f in files),
                model_prefix=str(prefix),
                vocab_size=vocab_size,
                model_type="bpe",
                character_coverage=1.0,
                normalization_rule_name="identity",
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                unk_surface="⁇",  # not " ⁇ ": the spaces around a word are pieces of their own already
                input_sentence_size=INPUT_SENTENCE_SIZE,
                shuffle_input_sentence=True,
                num_threads=2,
                minloglevel=2,  # warnings and the per-iteration log would flood the terminal
            )
        except RuntimeError as e:
            too_high = re.search(r"Vocabulary size (?:is )?too high \((\d+)\).*?<= (\d+)", str(e))
            if too_high:
                raise AiaynError(
                    f"{', '.join(map(str, files))}: too little text for a vocabulary of "
                    f"{too_high.group(1)}; use --vocab-size {too_high.group(2)} or less"
                ) from None
            raise AiaynError(
                f"{', '.join(map(str, files))}: SentencePiece training failed: {str(e).strip().splitlines()[-1]}"
            ) from None
        return cls(prefix.with_suffix(".model"))

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Load ``path`` itself (a ``.model`` file) or ``path/spm.model`` (a data or run folder)."""
        path = Path(path)
        model = path / MODEL_NAME if path.is_dir() else path
        if not model.is_file():
            raise AiaynError(f"{model}: SentencePiece model not found; run `aiayn prepare` to create it")
        try:
            return cls(model)
        except (OSError, RuntimeError):
            raise AiaynError(f"{model}: not a SentencePiece model; run `aiayn prepare` again") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many lines in one C++ call (SentencePiece parallelises it over threads)."""
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode a whole sequence at once (piece by piece would lose the spaces;
        docs/pitfalls.md: "Whole-sequence decoding").

        PAD, BOS and EOS are dropped wherever they sit; UNK decodes to "⁇".
        Accepts lists, tuples, numpy arrays and 1-D tensors.
        """
        return self.sp.decode([i for i in map(int, ids) if i not in SPECIAL_IDS])

    def pieces(self, text: str) -> list[str]:
        """Subword labels, e.g. ``['▁En', '▁el', '▁princip', 'io']``, for attention plots."""
        return self.sp.encode(text, out_type=str)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def copy_to(self, directory: Path) -> Path:
        """Copy ``spm.model`` (and ``spm.vocab``) into ``directory`` so a checkpoint stands alone."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / MODEL_NAME
        if self.model_path.resolve() != target.resolve():
            shutil.copyfile(self.model_path, target)
            vocab = self.model_path.with_suffix(".vocab")
            if vocab.is_file():
                shutil.copyfile(vocab, directory / VOCAB_NAME)
        return target

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size})"
