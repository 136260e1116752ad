"""Getting a data set's folder onto disk: where it is searched for, and the download (with a
checksum) and safe extraction of its official archive when asked to. Every function takes
the folder's name and the files that identify it, so each data set's loader supplies its own.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from .._files import PathLike, cache_dir
from .errors import DataError


class DataVariableError(FileNotFoundError):
    """``$CBN_DATA`` names a folder without the data set: an error, never a fallback to the
    shipped sample (as a wrong ``root`` is)."""


def search_paths(folder_name: str) -> list[tuple[str, Optional[Path]]]:
    """Where a data set's folder ``folder_name`` is looked for when no root is given, in order.

    Returns
    -------
    list of (description, path)
        path is None for ``$CBN_DATA`` when it is unset. Each path may be the folder itself or
        its parent. Computed at call time from the environment, the home folder and the
        working directory.
    """
    env = os.environ.get("CBN_DATA")
    home, cwd = Path.home(), Path.cwd()
    return [
        ("$CBN_DATA", Path(env).expanduser() if env else None),
        ("working directory", cwd / "data" / folder_name),
        ("working directory", cwd / folder_name),
        ("home", home / "data" / folder_name),
        ("home", home / "datasets" / folder_name),
        ("cbn download cache", cache_dir() / folder_name),
        ("keras cache", home / ".keras" / "datasets" / folder_name),
    ]


def as_data_dir(root: Path, folder_name: str, markers: Sequence[str]) -> Optional[Path]:
    """The data folder for ``root`` (its parent, or the folder itself), or None if absent.

    ``root`` counts as the folder itself when it has the official name or holds one of the
    ``markers`` files; any other folder (say an empty ``./data``) is a parent, so a download
    fills it.
    """
    if (root / folder_name).is_dir():
        return root / folder_name
    if root.is_dir() and (
        root.name == folder_name or any((root / name).exists() for name in markers)
    ):
        return root
    return None


def _find(what: str, folder_name: str, markers: Sequence[str]) -> Path:
    looked = []
    for label, path in search_paths(folder_name):
        if path is None:
            looked.append(f"  {label}: not set")
            continue
        found = as_data_dir(path, folder_name, markers)
        if found is not None:
            return found
        looked.append(f"  {path}  ({label})")
    raise FileNotFoundError(
        f"{what} ('{folder_name}' folder, python version) not found. Looked in:\n"
        + "\n".join(looked)
        + "\nPass root=... (command line: --data DIR), set $CBN_DATA to the folder, or use "
        "download=True (command line: --download)."
    )


def _fetch(url: str, archive: Path, md5: str) -> None:
    """Download ``url`` to ``archive`` with a progress bar; delete it unless its md5 matches."""
    from tqdm.auto import tqdm  # only needed for downloads

    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"url must be http(s), got {url!r}")
    part = archive.with_name(archive.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {archive.name}",
            ) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != md5.lower():
        part.unlink(missing_ok=True)
        raise DataError(
            f"{url}: md5 {digest.hexdigest()} does not match the expected {md5}; "
            "the downloaded file was deleted"
        )
    os.replace(part, archive)


def _check_member(member: tarfile.TarInfo, archive: Path, folder_name: str) -> None:
    """Refuse anything the official archive does not contain: links, devices, escaping paths."""
    name = PurePosixPath(member.name)
    parts = [p for p in name.parts if p != "."]
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in parts or not parts:
        raise DataError(f"{archive}: refused unsafe path {member.name!r} in archive")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refused {member.name!r}: only regular files and folders are "
            "allowed, not links or devices"
        )
    if parts[0] != folder_name:
        raise DataError(f"{archive}: refused {member.name!r}: outside {folder_name}/")


def _extract(archive: Path, dest_dir: Path, folder_name: str) -> Path:
    """Extract the ``folder_name`` folder of ``archive`` into ``dest_dir`` atomically."""
    target = dest_dir / folder_name
    scratch = Path(tempfile.mkdtemp(prefix=".cbn-extract-", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive, folder_name)
                if hasattr(tarfile, "data_filter"):  # second line of defence where available
                    tar.extractall(scratch, members=members, filter="data")
                else:
                    tar.extractall(scratch, members=members)
        except DataError:
            raise
        except Exception as exc:  # tarfile.ReadError, EOFError, zlib.error, filter errors
            raise DataError(
                f"{archive}: not a valid tar.gz archive: {type(exc).__name__}: {exc}"
            ) from exc
        extracted = scratch / folder_name
        if not extracted.is_dir():
            raise DataError(f"{archive}: the archive has no {folder_name}/ folder")
        os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _download(dest_dir: Path, url: str, md5: str, archive_name: str, folder_name: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / archive_name
    _fetch(url, archive, md5)
    try:
        return _extract(archive, dest_dir, folder_name)
    finally:
        archive.unlink(missing_ok=True)  # the extracted folder makes it redundant


def resolve_folder(root: Optional[PathLike], download: bool, url: str, md5: str, *,
                   what: str, archive: str, folder_name: str, markers: Sequence[str]) -> Path:
    """The data folder: under ``root`` when given, else the first of :func:`search_paths`;
    downloaded from ``url`` (checked against ``md5``) into ``root``, ``$CBN_DATA`` or the
    cache when it is absent and ``download`` is true.

    Parameters
    ----------
    root : path or None
        The data folder or its parent.
    download : bool
    url, md5 : str
        The official archive and its checksum.
    what : str
        The data set's name, for messages.
    archive : str
        The name the downloaded archive is saved under (deleted once extracted).
    folder_name : str
        The folder's official name.
    markers : sequence of str
        Files whose presence marks a folder of another name as the data folder.

    Raises
    ------
    FileNotFoundError
        Nothing found and no download asked (the message lists every place tried).
    DataError
        The download fails its checksum or the archive holds unsafe paths.
    """
    if root is not None:
        root = Path(root).expanduser()
        if root.is_file():
            raise FileNotFoundError(
                f"{root} is a file, not a folder: give the {folder_name} folder or the folder "
                "holding it (extract a downloaded archive first)"
            )
        found = as_data_dir(root, folder_name, markers)
        if found is not None:
            return found
        if not download:
            raise FileNotFoundError(
                f"no {what} at {root}: expected {root / folder_name} or the data "
                "files in that folder itself; to fetch it there, use download=True "
                "(command line: --download)"
            )
        return _download(root.parent if root.name == folder_name else root, url, md5,
                         archive, folder_name)
    env = os.environ.get("CBN_DATA")
    if env and not download and as_data_dir(Path(env).expanduser(), folder_name,
                                            markers) is None:
        raise DataVariableError(
            f"$CBN_DATA is {env}, which holds no {what}: expected "
            f"{Path(env).expanduser() / folder_name} or the data files in that folder itself; "
            "fix or unset CBN_DATA (to fetch it there, use download=True (command line: "
            "--download))")
    try:
        return _find(what, folder_name, markers)
    except FileNotFoundError:
        if not download:
            raise
        env = os.environ.get("CBN_DATA")
        return _download(Path(env).expanduser() if env else cache_dir(), url, md5, archive,
                         folder_name)
