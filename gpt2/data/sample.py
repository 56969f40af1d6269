"""The bundled sample: a real 206-article English Wikipedia excerpt shipped by gensim.

It is resolved from the installed ``gensim`` package, never copied into this repo.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gpt2.errors import UserError

SAMPLE_NAME = "sample"
_SAMPLE_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def sample_dump_path() -> Path:
    """Path of the excerpt inside the installed gensim package (``pip install gensim``)."""
    # Found, not imported: importing gensim (numpy, scipy...) would cost more CPU than preparing the excerpt.
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--dump sample needs the Wikipedia excerpt shipped by gensim: pip install gensim")
    path = Path(spec.submodule_search_locations[0]) / _SAMPLE_FILE
    if not path.is_file():
        raise UserError(f"gensim is installed but its Wikipedia excerpt is missing: {path}")
    return path
