r"""The text a built-in language-model task trains on: 630 KB of Python standard-library
source, pinned byte for byte.

Why this corpus: every machine that runs hpo2 has a Python standard library, so the
text is there offline with no download and no extra package.  The standard library
changes between Python releases, so the corpus is not "the standard library" but the
93 files below (sorted by path, 630,197 bytes) that were **byte-identical** in
CPython 3.11.2 (Debian's ``libpython3.11-minimal`` / ``-stdlib``), 3.11.7, 3.12.1 and
3.13.0 -- the oldest and newest interpreters hpo2 supports, across patch levels and a
distribution's build -- leaving out the test suites, IDLE, tkinter, lib2to3, distutils
and ensurepip (optional packages on some systems) and ``encodings/`` (generated codec
tables, 1.4 MB of hex that would dominate the byte count while saying little about
code).  A file that is the same in all four is very likely the same in every release
between them, so every supported interpreter serves the same bytes.

Each file is pinned by the first 16 hex digits of its SHA-256, and the whole corpus
(the files' bytes concatenated in the listed order) by :data:`CORPUS_SHA256`.  When an
interpreter (a future release, a patched distribution build) ships a file differently,
:func:`read_corpus` raises :class:`CorpusMismatchError` naming each differing file and
both checksums; the task never trains silently on other bytes, so its numbers stay
comparable across machines.  ``data_dir`` then points at a folder that holds the files
as listed (e.g. a copy of ``Lib/`` from CPython 3.12).
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

from hpo2.errors import DataMissingError

#: path under the standard library folder -> first 16 hex digits of the file's SHA-256
CORPUS_FILES: dict[str, str] = {
    "__future__.py": "981d4c398849f9eb",
    "__hello__.py": "a8ce70b199497950",
    "_compression.py": "3ad5d60627477a60",
    "_markupbase.py": "cb14dd6f2e2439eb",
    "_py_abc.py": "f9c6fe3dd9b51bd7",
    "_sitebuiltins.py": "b9388bc1d6d12ed6",
    "_threading_local.py": "e1bf3dae66d0bfa6",
    "_weakrefset.py": "91895a451d06e9f5",
    "antigravity.py": "8a5ee63e1b79ba27",
    "asyncio/exceptions.py": "a5971f88be14cd14",
    "asyncio/log.py": "80e4cc3ded4b138b",
    "asyncio/mixins.py": "8f4a3e16eca845eb",
    "asyncio/protocols.py": "1d1b49988c338b4e",
    "asyncio/threads.py": "39d3729538364156",
    "asyncio/trsock.py": "c0eac37debcc51b7",
    "asyncio/windows_utils.py": "e6fcffefa2521666",
    "concurrent/__init__.py": "87ad5c8954dd56fb",
    "concurrent/futures/_base.py": "8c6d5f09f7c535d4",
    "contextvars.py": "5ed260be8d1f4fe9",
    "curses/__init__.py": "d8730e360dd00ec0",
    "curses/has_key.py": "15a052812d9ae801",
    "curses/panel.py": "13ef404a30da1825",
    "difflib.py": "0c6afc23568d55b3",
    "email/_encoded_words.py": "4178321600c0a19c",
    "email/contentmanager.py": "2d81026aef17e478",
    "email/headerregistry.py": "fada56c25b6a457c",
    "email/mime/__init__.py": "e3b0c44298fc1c14",
    "email/mime/application.py": "b82a944ccba03e7e",
    "email/mime/image.py": "460be5b50cfcaab8",
    "email/quoprimime.py": "77b454bd3ba3b5e3",
    "graphlib.py": "7bd338c5a475d110",
    "heapq.py": "6d43277e5c76fc0f",
    "importlib/metadata/_collections.py": "089d0e4c21c88d60",
    "importlib/metadata/_functools.py": "3ec636fb8aeb297e",
    "importlib/metadata/_itertools.py": "72faffdaff0145bc",
    "importlib/metadata/_text.py": "1c2b0592c66924b7",
    "importlib/readers.py": "d0d57d118d64916f",
    "importlib/simple.py": "8e687aeeb1db537d",
    "json/__init__.py": "d5d41e2c29049515",
    "json/scanner.py": "8604d9d03786d0d5",
    "multiprocessing/__init__.py": "a5a42976033c7d63",
    "multiprocessing/dummy/__init__.py": "9127a40ea0ff342c",
    "multiprocessing/dummy/connection.py": "d63dd1979fde9c13",
    "multiprocessing/heap.py": "f6bb79bb99b9ae48",
    "multiprocessing/popen_forkserver.py": "0588ad0e5a36718b",
    "multiprocessing/popen_spawn_posix.py": "97b5d25aa4795168",
    "multiprocessing/reduction.py": "4999f8b9ae7b3e8a",
    "multiprocessing/sharedctypes.py": "77ef522912474652",
    "nturl2path.py": "980982ba66cc403d",
    "optparse.py": "07d224301cba312f",
    "pyclbr.py": "e8ca09333701ba41",
    "pydoc_data/__init__.py": "e3b0c44298fc1c14",
    "sre_compile.py": "f7fd87f8ac9dad7d",
    "sre_constants.py": "87013dc0b349c2c0",
    "sre_parse.py": "c492913453230608",
    "string.py": "24aeae1f0526250f",
    "stringprep.py": "60b6c83581093029",
    "struct.py": "9c231f9497caf513",
    "this.py": "481d0cb3de511eae",
    "tomllib/__init__.py": "71f67036895f4c5a",
    "tomllib/_parser.py": "4579b04a75664523",
    "tomllib/_re.py": "75b8e0e428594f6d",
    "tomllib/_types.py": "f864c6d9552a929c",
    "tracemalloc.py": "c2cc84a05b824df7",
    "unittest/__main__.py": "ff6b9a100d320017",
    "unittest/_log.py": "905672317ab26c65",
    "unittest/signals.py": "f8286e818ca56e10",
    "unittest/suite.py": "ed2da92bc9f97c53",
    "unittest/util.py": "fdcc640c3505d16d",
    "urllib/__init__.py": "e3b0c44298fc1c14",
    "urllib/response.py": "7e6c3b6d7a95f0d7",
    "urllib/robotparser.py": "389b811835f9a3ba",
    "weakref.py": "56f8d313fb74019e",
    "wsgiref/__init__.py": "c30e144025a63d26",
    "wsgiref/headers.py": "0fbf95a47d8e4c0d",
    "wsgiref/types.py": "ba66d30ce511a88e",
    "xml/__init__.py": "34296f728e7fe68c",
    "xml/dom/NodeFilter.py": "9bfacbbb64e239a7",
    "xml/dom/__init__.py": "b415a6f3d3663c3a",
    "xml/dom/domreg.py": "826b02a803930834",
    "xml/dom/minicompat.py": "42974c4c67803dfe",
    "xml/dom/pulldom.py": "614b88673d496a36",
    "xml/dom/xmlbuilder.py": "d4f33a8f01875562",
    "xml/etree/ElementPath.py": "ae8a80a8b51567b4",
    "xml/etree/__init__.py": "91950edfb196c105",
    "xml/etree/cElementTree.py": "d0f57acab07fe4f9",
    "xml/parsers/__init__.py": "b88497adc30d5d5e",
    "xml/parsers/expat.py": "64e1947747c28741",
    "xml/sax/handler.py": "64c7aae49f1dd382",
    "xml/sax/saxutils.py": "3fe2cdb6386e0c4d",
    "xmlrpc/__init__.py": "87ad5c8954dd56fb",
    "zoneinfo/__init__.py": "ac7fb403e4371d07",
    "zoneinfo/_common.py": "67deaf0ba41aa486",
}

#: SHA-256 of the files' bytes concatenated in :data:`CORPUS_FILES`' (sorted) order
CORPUS_SHA256 = "2ebaaeb8acb307bc942372aa91c5994ac73e743bc8b18f12f46afe5e17f65ad6"
CORPUS_BYTES = 630_197
PINNED_FROM = "CPython 3.11.2 (Debian), 3.11.7, 3.12.1 and 3.13.0"


class CorpusMismatchError(DataMissingError):
    """The corpus files exist but hold other bytes than the pinned ones."""


def stdlib_dir() -> Path:
    """This interpreter's standard-library folder (where ``json/decoder.py`` lives)."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_dir(data_dir: str | None) -> Path:
    """The folder the corpus is read from: ``data_dir``, or this interpreter's standard library."""
    return Path(data_dir) if data_dir else stdlib_dir()


def _how_to_fix(directory: Path) -> str:
    return (
        f"the task reads {len(CORPUS_FILES)} files pinned from {PINNED_FROM}; point task.settings.data_dir "
        f"at a folder holding them as those releases ship them (e.g. a copy of CPython 3.12's Lib/) "
        f"instead of {directory}"
    )


def check_corpus_files(directory: Path) -> None:
    """Raise :class:`DataMissingError` naming the corpus files missing from ``directory`` (reads none)."""
    missing = [name for name in CORPUS_FILES if not (directory / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataMissingError(f"missing {shown} in {directory}: {_how_to_fix(directory)}")


def read_corpus(directory: Path) -> bytes:
    """The corpus bytes from ``directory``, verified against the pinned checksums.

    Raises :class:`DataMissingError` when files are missing and
    :class:`CorpusMismatchError` when any file's bytes differ, naming each such
    file with its found and pinned digests, and the corpus checksum found and pinned.
    """
    check_corpus_files(directory)
    parts, differing = [], []
    for name, pinned in CORPUS_FILES.items():
        data = (directory / name).read_bytes()
        found = hashlib.sha256(data).hexdigest()[:16]
        if found != pinned:
            differing.append(f"{name} (sha256 {found}..., pinned {pinned}...)")
        parts.append(data)
    corpus = b"".join(parts)
    checksum = hashlib.sha256(corpus).hexdigest()
    if differing or checksum != CORPUS_SHA256:
        version = ".".join(str(v) for v in sys.version_info[:3])
        raise CorpusMismatchError(
            f"corpus checksum differs: sha256 {checksum}, pinned {CORPUS_SHA256}; "
            f"{len(differing)} of {len(CORPUS_FILES)} files differ in {directory} (Python {version}): "
            f"{', '.join(differing)}; {_how_to_fix(directory)}"
        )
    return corpus
