"""GPT-2 style byte-level BPE, trained and run by Hugging Face `tokenizers`.

Every UTF-8 byte is in the base alphabet, so any text encodes without unknown tokens. Five
reserved special tokens come first (ids 0-4): `<|endoftext|>` separates documents (GPT-2),
`<|pad|>` fills batches, and `<|start|>`, `<|delim|>`, `<|extract|>` are GPT-1's input-transform
tokens for fine-tuning. `kind="char"` learns no merges: one token per byte, for small demos.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS, PAD, START, DELIM, EXTRACT = "<|endoftext|>", "<|pad|>", "<|start|>", "<|delim|>", "<|extract|>"
SPECIALS = [EOS, PAD, START, DELIM, EXTRACT]
N_BYTES = 256
MIN_VOCAB = N_BYTES + len(SPECIALS)


class TokenizerError(ValueError):
    """A tokenizer file or setting that cannot be used; the message names it."""


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` exposing the ids the stages need."""

    def __init__(self, tok: HFTokenizer):
        self.tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2, kind: str = "bpe") -> Tokenizer:
        if kind not in ("bpe", "char"):
            raise TokenizerError(f"tokenizer.kind={kind!r}: expected 'bpe' or 'char'")
        if kind == "char":
            vocab_size = MIN_VOCAB
        if vocab_size < MIN_VOCAB:
            raise TokenizerError(
                f"tokenizer.vocab_size={vocab_size} is smaller than {N_BYTES} bytes + {len(SPECIALS)} special tokens ({MIN_VOCAB})"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path, *, add_missing_specials: bool = False) -> Tokenizer:
        """Load a tokenizer.json; without `add_missing_specials`, all five specials must be there."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        missing = [s for s in SPECIALS if tok.token_to_id(s) is None]
        if missing and add_missing_specials:
            tok.add_special_tokens(missing)
        elif missing:
            raise TokenizerError(f"{path}: tokenizer lacks the special tokens {', '.join(missing)}")
        return cls(tok)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"tokenizer has no token {token!r}")
        return i

    @property
    def eos_id(self) -> int:
        return self.token_id(EOS)

    @property
    def pad_id(self) -> int:
        return self.token_id(PAD)

    @property
    def start_id(self) -> int:
        return self.token_id(START)

    @property
    def delim_id(self) -> int:
        return self.token_id(DELIM)

    @property
    def extract_id(self) -> int:
        return self.token_id(EXTRACT)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes on all cores (the Rust side parallelises the batch)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
