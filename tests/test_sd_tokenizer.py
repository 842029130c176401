"""CLIP's BPE tokenizer (issue 21, part). tests/data/bpe_simple_vocab_16e6.txt.gz is OpenCLIP's vocabulary, copied
from the open_clip_torch 3.3.0 wheel on PyPI (MIT licence; sha256 924691ac...d6804a). The expected ids were checked
by hand against transformers 4.57.6's CLIPTokenizer built from the same merges (identical on every case here but
'&amp;', which OpenCLIP, and so this tokenizer, HTML-unescapes first: transformers without ftfy does not)."""

import gzip
import hashlib
import os
import zipfile

import numpy as np
import pytest

from reposedm_jax.sd.tokenizer import Tokenizer

VOCAB = os.path.join(os.path.dirname(__file__), 'data', 'bpe_simple_vocab_16e6.txt.gz')


@pytest.fixture(scope='module')
def tok():
  return Tokenizer(VOCAB)


def test_vocab_file_is_openclips():
  digest = hashlib.sha256(open(VOCAB, 'rb').read()).hexdigest()
  assert digest == '924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a'


@pytest.mark.parametrize('text, ids', [
    ('a photo of a cat', [320, 1125, 539, 320, 2368]),
    ('A man DANCING, with hands close to his head!', [320, 786, 6226, 267, 593, 3500, 2660, 531, 787, 1375, 256]),
    ("two boys playing football; they're 10 years old", [1237, 2034, 1629, 1882, 282, 889, 982, 272, 271, 1151, 896]),
    ('naïve café &amp; crème brûlée', [1097, 35689, 563, 15304, 261, 1075, 12138, 614, 711, 127, 119, 75, 13489]),
])
def test_token_ids(tok, text, ids):
  assert tok.encode(text) == ids


def test_tokenize_pads_and_truncates_like_openclip(tok):
  out = tok.tokenize(['a photo of a cat', 'cat ' * 100])
  assert out.shape == (2, 77) and out.dtype == np.int32
  np.testing.assert_array_equal(out[0, :7], [49406, 320, 1125, 539, 320, 2368, 49407])
  assert (out[0, 7:] == 0).all()
  assert out[1, 0] == 49406 and out[1, -1] == 49407 and (out[1, 1:-1] == 2368).all()


def test_reads_the_vocabulary_from_a_wheel_and_rejects_other_files(tmp_path, tok):
  whl = tmp_path / 'open_clip_torch-0.0.0-py3-none-any.whl'
  with zipfile.ZipFile(whl, 'w') as z:
    z.write(VOCAB, 'open_clip/bpe_simple_vocab_16e6.txt.gz')
  assert Tokenizer(str(whl)).encode('a photo of a cat') == tok.encode('a photo of a cat')
  bad = tmp_path / 'other.txt.gz'
  bad.write_bytes(gzip.compress(b'#version\nab cd\n'))
  with pytest.raises(ValueError, match='not CLIP'):
    Tokenizer(str(bad))
  with pytest.raises(ValueError, match='no such file'):
    Tokenizer(str(tmp_path / 'missing.gz'))
