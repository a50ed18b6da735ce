"""BERT uncased WordPiece with LoTLIP's corner tokens.

A text is a list of pieces (sub-captions, or one short caption) and becomes
`[CLS] [Corner0] ... [Corner{K-1}] piece1 [SEP] piece2 [SEP] ... [PAD] ...`, cut to the context
length (a cut text still ends with [SEP]). This is what LoTLIP's HFTokenizer makes of a text whose
sub-captions are joined by '. ' (it splits on '. ' and joins with [SEP]; see
docs/TRAINING_TEXTS.md). `budget` is the room left for pieces and their [SEP]s, which
train_hooks/sampling.py fills without overflowing it. Corner ids come after the vocab
(30,522 + j for BERT uncased), so a pretrained embedding table keeps its rows and the K new rows
live in the model.
Every text carries the corners, short captions included, so text positions are the same in
training and at inference (where a text is read from its [CLS]).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def corner_names(num_corner: int) -> list[str]:
    return [f"[Corner{j}]" for j in range(num_corner)]


def resolve_vocab(vocab: str | Path | None) -> Path:
    """vocab.txt from a file, a folder holding one (a downloaded bert-base-uncased), or the
    bundled bert-base-uncased vocab when None."""
    if vocab is None:
        from shards.tokens import default_vocab_path

        return default_vocab_path()
    path = Path(vocab)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vocab.txt (give a BERT folder or a vocab.txt file)")
    return path


class CornerTokenizer:
    """Turns lists of text pieces into padded id and mask tensors with K corner tokens."""

    def __init__(
        self, vocab: str | Path | None = None, num_corner: int = 2, context_length: int = 192
    ) -> None:
        from tokenizers.implementations import BertWordPieceTokenizer

        if context_length < num_corner + 2:
            raise ValueError(
                f"context length {context_length} leaves no room for [CLS], {num_corner} corner "
                "tokens and [SEP]"
            )
        self.vocab_path = resolve_vocab(vocab)
        self._tok = BertWordPieceTokenizer(str(self.vocab_path), lowercase=True)
        self.vocab_size = self._tok.get_vocab_size()
        self.num_corner = num_corner
        self.context_length = context_length
        ids = {t: self._tok.token_to_id(t) for t in SPECIAL}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{self.vocab_path}: vocab lacks {missing}; not a BERT vocab")
        self.pad_id, self.cls_id, self.sep_id = ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]
        self.corner_ids = [self.vocab_size + j for j in range(num_corner)]

    @property
    def budget(self) -> int:
        """Tokens left for pieces and their [SEP]s: context length - [CLS] - K corners."""
        return self.context_length - 1 - self.num_corner

    def count(self, pieces: Sequence[str]) -> list[int]:
        """WordPiece tokens of each piece, without [SEP] (what shards store as
        `subcaption_tokens`)."""
        if not pieces:
            return []
        return [len(e.ids) for e in self._tok.encode_batch(list(pieces), add_special_tokens=False)]

    def encode_ids(self, texts: Sequence[Sequence[str]]) -> list[list[int]]:
        """Token ids per text, unpadded, each at most context_length long."""
        flat = [p for pieces in texts for p in pieces]
        enc = self._tok.encode_batch(flat, add_special_tokens=False) if flat else []
        head = [self.cls_id, *self.corner_ids]
        room = self.context_length - len(head)
        out, i = [], 0
        for pieces in texts:
            body: list[int] = []
            for _ in pieces:
                body += enc[i].ids + [self.sep_id]
                i += 1
            if not body:
                body = [self.sep_id]
            if len(body) > room:
                # Cut, but keep a closing [SEP] as BERT saw in pre-training.
                body = body[: room - 1] + [self.sep_id]
            out.append(head + body)
        return out

    def __call__(self, texts: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [B, L] long, padding mask [B, L] bool, True on real tokens)."""
        rows = self.encode_ids(texts)
        ids = torch.full((len(rows), self.context_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), self.context_length), dtype=torch.bool)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = True
        return ids, mask

    def describe(self) -> dict:
        return {
            "vocab": str(self.vocab_path),
            "num_corner": self.num_corner,
            "context_length": self.context_length,
        }
