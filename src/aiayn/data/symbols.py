"""Character and symbol tokenizers for tasks whose units are known: letters, phonemes, digits.

SentencePiece (tokenizer.py) learns subwords for translation. Grapheme-to-phoneme conversion and
the algorithmic tasks have fixed units instead, and a model of them must see exactly those: a
letter, an ARPAbet phoneme (``AH0``), a digit. ``SymbolTokenizer`` is a joint vocabulary of such
symbols, built from the training split, with the same interface as ``Tokenizer``
(``encode_batch``, ``decode``, ``vocab_size``, ``pieces``, ``id_to_piece``, ``copy_to``) and the
same special ids (``aiayn.config``: PAD 0, UNK 1, BOS 2, EOS 3). Each side splits its text in
one of two ways:

    char      every character is a symbol, spaces included: "it's" -> i t ' s
    symbols   whitespace separates symbols: "HH AH0 L OW1" -> HH AH0 L OW1

``data.tokenizer=char`` and ``symbols`` use one way for both sides; ``aiayn prepare cmudict``
splits the source (a word) into characters and the target (its pronunciation) at spaces. One
vocabulary serves both sides (letters and phonemes do not collide: phonemes are upper-case,
CMUdict's letters lower-case), so §3.4's shared embedding matrix works unchanged. Both ways
round-trip exactly: ``decode(encode(x)) == x`` for every text of known symbols (``symbols``:
text with single spaces, which ``text.normalize`` guarantees).

A symbol outside the vocabulary encodes as UNK and is counted (``unknown``): the commands that
read user input (translate, evaluate, serve) say how many there were. The vocabulary lives in
the data folder as ``vocab.json`` and is copied into every run folder, as ``spm.model`` is.

``open_tokenizer(folder)`` is how every command opens a data or run folder's tokenizer,
whichever kind it holds.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, AiaynError
from aiayn.data.tokenizer import MODEL_NAME, Tokenizer

VOCAB_FILE = "vocab.json"
UNITS = ("char", "symbols")
TOKENIZERS = ("sentencepiece", *UNITS)
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # at PAD_ID, UNK_ID, BOS_ID, EOS_ID
UNK_TEXT = "⁇"  # what UNK decodes to, as SentencePiece's


def split_text(text: str, unit: str) -> list[str]:
    """``text`` as symbols: its characters (``char``) or its whitespace-separated words (``symbols``)."""
    return list(text) if unit == "char" else text.split()


class SymbolTokenizer:
    """A fixed symbol vocabulary; ids 0-3 are the special ids, symbols follow in sorted order."""

    def __init__(self, symbols: Sequence[str], *, source: str, target: str, path: Path | None = None):
        for side, unit in (("source", source), ("target", target)):
            if unit not in UNITS:
                raise AiaynError(f"{path or VOCAB_FILE}: units.{side} is '{unit}'; use one of {', '.join(UNITS)}")
        for s in symbols:
            if not isinstance(s, str) or not s or s in SPECIALS or (len(s) > 1 and len(s.split()) != 1):
                raise AiaynError(f"{path or VOCAB_FILE}: symbol {s!r} is unusable; run `aiayn prepare` again")
        if len(set(symbols)) != len(symbols):
            raise AiaynError(f"{path or VOCAB_FILE}: a symbol appears twice; run `aiayn prepare` again")
        assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
        self.symbols = list(SPECIALS) + list(symbols)
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        self.source, self.target = source, target
        self.model_path = path
        self.unknown: Counter = Counter()  # symbols read as UNK since the last `report_unknown`

    @classmethod
    def build(cls, texts: dict[str, Iterable[str]], *, source: str, target: str) -> SymbolTokenizer:
        """The vocabulary of the training text: ``texts["source"]`` and ``texts["target"]``."""
        found: set[str] = set()
        for side, unit in (("source", source), ("target", target)):
            for line in texts[side]:
                found.update(split_text(line, unit))
        return cls(sorted(found - set(SPECIALS)), source=source, target=target)

    @property
    def kind(self) -> str:
        """``char`` or ``symbols`` (meta.json's ``tokenizer``): ``char`` only when both sides are."""
        return "char" if self.source == self.target == "char" else "symbols"

    def save(self, folder: Path) -> Path:
        path = Path(folder) / VOCAB_FILE
        body = {"units": {"source": self.source, "target": self.target}, "symbols": self.symbols[len(SPECIALS) :]}
        path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        self.model_path = path
        return path

    @classmethod
    def load(cls, path: Path) -> SymbolTokenizer:
        """``path`` itself or ``path/vocab.json``."""
        path = Path(path)
        path = path / VOCAB_FILE if path.is_dir() else path
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            units, symbols = body["units"], body["symbols"]
            source, target = units["source"], units["target"]
        except FileNotFoundError:
            raise AiaynError(f"{path}: symbol vocabulary not found; run `aiayn prepare` to create it") from None
        except (ValueError, KeyError, TypeError):
            raise AiaynError(f"{path}: not a symbol vocabulary (units, symbols); run `aiayn prepare` again") from None
        if not isinstance(symbols, list):
            raise AiaynError(f"{path}: field 'symbols' is not a list; run `aiayn prepare` again")
        return cls(symbols, source=source, target=target, path=path)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def _encode(self, text: str, unit: str) -> list[int]:
        out = []
        for s in split_text(text, unit):
            i = self.ids.get(s, UNK_ID)
            if i == UNK_ID:
                self.unknown[s] += 1
            out.append(i)
        return out

    def encode(self, text: str) -> list[int]:
        """A source text's ids (no BOS/EOS: batching adds them)."""
        return self._encode(text, self.source)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode(t, self.source) for t in texts]

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode(t, self.target) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Target text: PAD, BOS and EOS dropped wherever they sit; UNK (and an id past the
        vocabulary) decodes to "⁇"."""
        kept = [int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)]
        parts = [self.symbols[i] if UNK_ID < i < len(self.symbols) else UNK_TEXT for i in kept]
        return ("" if self.target == "char" else " ").join(parts)

    def pieces(self, text: str) -> list[str]:
        """A source text's symbols, UNK shown as "⁇", for attention plots."""
        return [s if s in self.ids else UNK_TEXT for s in split_text(text, self.source)]

    def id_to_piece(self, i: int) -> str:
        return self.symbols[int(i)]

    def report_unknown(self, what: str) -> None:
        """One line on stderr when symbols were read as UNK since the last report, then forget them."""
        if self.unknown:
            top = ", ".join(f"{s!r} ×{n}" for s, n in self.unknown.most_common(5))
            print(
                f"aiayn: {what}: {sum(self.unknown.values()):,} symbol(s) not in the vocabulary were read as "
                f"UNK ({top}); the model was never trained on them",
                file=sys.stderr,
            )
            self.unknown.clear()

    def copy_to(self, directory: Path) -> Path:
        """Copy ``vocab.json`` into ``directory`` so a run folder stands alone."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / VOCAB_FILE
        if self.model_path is None or self.model_path.resolve() != target.resolve():
            if self.model_path is None:
                self.save(directory)
            else:
                shutil.copyfile(self.model_path, target)
        return target

    def __repr__(self) -> str:
        return f"SymbolTokenizer({self.source}->{self.target}, vocab_size={self.vocab_size})"


def tokenizer_file(folder: Path) -> Path | None:
    """The tokenizer file of a data or run folder (``vocab.json`` or ``spm.model``), or None."""
    for name in (VOCAB_FILE, MODEL_NAME):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def open_tokenizer(folder: Path) -> Tokenizer | SymbolTokenizer:
    """The tokenizer of a data or run folder, whichever kind it holds: ``vocab.json`` (char or
    symbols) or ``spm.model`` (SentencePiece). A folder holds one (``corpus.write_data``)."""
    path = tokenizer_file(folder)
    if path is None:
        raise AiaynError(
            f"{folder}: no tokenizer ({VOCAB_FILE} or {MODEL_NAME}); it is not a prepared data or run folder, "
            "run `aiayn prepare` first"
        )
    return SymbolTokenizer.load(path) if path.name == VOCAB_FILE else Tokenizer.load(path)


def encode_targets(tokenizer: Tokenizer | SymbolTokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Target-side ids: a symbol tokenizer may split its two sides differently, SentencePiece does not."""
    if isinstance(tokenizer, SymbolTokenizer):
        return tokenizer.encode_target_batch(texts)
    return tokenizer.encode_batch(texts)
