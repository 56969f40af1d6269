"""The bundled sample: a real 206-article English Wikipedia excerpt shipped by gensim.

It is resolved from the installed ``gensim`` package, never copied into this repo.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from gpt2.errors import UserError

SAMPLE_NAME = "sample"
_SAMPLE_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def sample_dump_path() -> Path:
    """Path of the excerpt inside the installed gensim package (``pip install gensim``)."""
    try:
        root = importlib.resources.files("gensim")
    except ModuleNotFoundError:
        raise UserError(
            "--dump sample needs the Wikipedia excerpt shipped by gensim: pip install gensim"
        ) from None
    path = Path(str(root / _SAMPLE_FILE))
    if not path.is_file():
        raise UserError(f"gensim is installed but its Wikipedia excerpt is missing: {path}")
    return path
