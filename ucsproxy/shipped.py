"""The recordings that ship with ucsproxy, found by name wherever ucsproxy is installed.

The repository keeps them at its top level (``recordings/``, reviewable in a diff);
the wheel carries the same files as package data ``ucsproxy/recordings/`` (mapped in
pyproject.toml). :func:`resolve_source` lets every place that takes a recording (the
``replay`` command, the ``ucs_replay`` option, the pytest plugin's ``ucs_replay(...)``)
accept a shipped name: ``lync-session`` or ``recordings/lync-session``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def recordings_dir() -> Path | None:
    """Where the shipped recordings are: inside the installed package, else the source checkout's top level."""
    for candidate in (_PACKAGE / "recordings", _PACKAGE.parent / "recordings"):
        if candidate.is_dir() and any((d / "recording.json").is_file() for d in candidate.iterdir() if d.is_dir()):
            return candidate
    return None


def shipped_names() -> list[str]:
    """Names of the shipped recordings (fixture directories), sorted."""
    found = recordings_dir()
    if found is None:
        return []
    return sorted(d.name for d in found.iterdir() if (d / "recording.json").is_file())


def shipped_recording(name: str) -> Path | None:
    """The shipped recording called ``name`` (``lync-session`` or ``recordings/lync-session``), or None."""
    text = str(name).replace("\\", "/").rstrip("/")
    if text.startswith("recordings/"):
        text = text[len("recordings/"):]
    if not text or "/" in text or text in (".", ".."):
        return None
    found = recordings_dir()
    if found is None:
        return None
    path = found / text
    return path if (path / "recording.json").is_file() else None


def resolve_source(source: str | Path) -> str:
    """A recording to replay: ``source`` itself when that path exists, else the shipped recording it
    names, else ``source`` unchanged (the caller says it was not found; see :func:`not_found_hint`)."""
    if not str(source) or Path(source).exists():
        return str(source)
    shipped = shipped_recording(str(source))
    return str(shipped) if shipped is not None else str(source)


def not_found_hint() -> str:
    """The end of a "recording not found" message: what can be named instead of a path."""
    names = shipped_names()
    if not names:
        return ""
    return f" (shipped recordings, usable by name: {', '.join(names)})"
