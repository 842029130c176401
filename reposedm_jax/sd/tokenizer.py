"""CLIP's byte-level BPE tokenizer (OpenCLIP's SimpleTokenizer, what SD 2.x tokenizes prompts with), in numpy.

The vocabulary is OpenCLIP's `bpe_simple_vocab_16e6.txt.gz`, read from the file itself or from inside an
`open_clip_torch-*.whl` (a zip: the package need not be installed, which would pull torchvision). Text is
HTML-unescaped, whitespace-collapsed and lower-cased (ftfy's mojibake repair is not applied: install-free), split
by CLIP's regex, byte-encoded and merged by rank. `tokenize` gives [B, 77] int32: <start>, tokens, <end>, zero
padding; a longer prompt is cut to 77 with <end> last, as OpenCLIP does.
"""

import functools
import gzip
import html
import os
import re
import zipfile

import numpy as np
import regex

VOCAB_NAME = 'bpe_simple_vocab_16e6.txt.gz'
SOT, EOT = '<|startoftext|>', '<|endoftext|>'
_PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                         regex.IGNORECASE)


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table."""
  bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def read_merges(path: str) -> list[tuple[str, str]]:
  """The merge list from the .txt.gz, or from the copy inside an open_clip_torch wheel."""
  if path.endswith('.whl'):
    with zipfile.ZipFile(path) as z:
      names = [n for n in z.namelist() if n.endswith('/' + VOCAB_NAME)]
      if not names:
        raise ValueError(f'{path}: no {VOCAB_NAME} inside (expected an open_clip_torch wheel)')
      data = z.read(names[0])
  elif os.path.isfile(path):
    with open(path, 'rb') as f:
      data = f.read()
  else:
    raise ValueError(f'{path}: no such file (pass {VOCAB_NAME} or an open_clip_torch-*.whl)')
  lines = gzip.decompress(data).decode('utf-8').split('\n')
  merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
  if len(merges) != 48894 or any(len(m) != 2 for m in merges):
    raise ValueError(f'{path}: not CLIP\'s BPE merge list ({len(merges)} merges, expected 48894 pairs)')
  return merges


class Tokenizer:
  def __init__(self, vocab_path: str, context_length: int = 77):
    merges = read_merges(vocab_path)
    self.byte_encoder = bytes_to_unicode()
    vocab = list(self.byte_encoder.values())
    vocab = vocab + [v + '</w>' for v in vocab] + [''.join(m) for m in merges] + [SOT, EOT]
    self.encoder = {v: i for i, v in enumerate(vocab)}
    self.ranks = {m: i for i, m in enumerate(merges)}
    self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
    self.context_length = context_length
    self._bpe = functools.lru_cache(maxsize=65536)(self._bpe_uncached)

  def _bpe_uncached(self, token: str) -> tuple[str, ...]:
    word = tuple(token[:-1]) + (token[-1] + '</w>',)
    while len(word) > 1:
      pairs = {(a, b) for a, b in zip(word, word[1:])}
      best = min(pairs, key=lambda p: self.ranks.get(p, float('inf')))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    return word

  def encode(self, text: str) -> list[int]:
    text = re.sub(r'\s+', ' ', html.unescape(html.unescape(text)).strip()).strip().lower()
    ids = []
    for piece in _PATTERN.findall(text):
      piece = ''.join(self.byte_encoder[b] for b in piece.encode('utf-8'))
      ids.extend(self.encoder[t] for t in self._bpe(piece))
    return ids

  def tokenize(self, texts) -> np.ndarray:
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = np.zeros((len(texts), self.context_length), np.int32)
    for i, t in enumerate(texts):
      ids = [self.sot] + self.encode(t) + [self.eot]
      if len(ids) > self.context_length:
        ids = ids[:self.context_length]
        ids[-1] = self.eot
      out[i, :len(ids)] = ids
    return out
