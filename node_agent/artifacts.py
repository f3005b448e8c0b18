"""Copy a model directory into Triton's local repository under its served name."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["install_model", "remove_model", "ArtifactError"]

_NAME_LINE = re.compile(r'^\s*name\s*:\s*"[^"]*"\s*$', re.MULTILINE)


class ArtifactError(RuntimeError):
    pass


def install_model(source: str, repository: Path, served_name: str) -> Path:
    """Copy ``source`` (a Triton model directory) to ``repository/served_name``.

    The copy is made beside the target and renamed into place, so Triton never
    sees a half-copied model. The config's ``name`` is set to the served name,
    because Triton requires it to match the directory.
    """
    src = Path(source[len("file://"):] if source.startswith("file://") else source)
    if not (src / "config.pbtxt").is_file():
        raise ArtifactError(f"{src} is not a Triton model directory (no config.pbtxt); "
                            "check the spec's storageUri and that this host can read it")
    repository.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{served_name}-", dir=repository))
    try:
        staged = tmp / served_name
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns("__pycache__"))
        cfg = staged / "config.pbtxt"
        text = cfg.read_text()
        if _NAME_LINE.search(text):
            text = _NAME_LINE.sub(f'name: "{served_name}"', text, count=1)
        else:
            text = f'name: "{served_name}"\n' + text
        cfg.write_text(text)
        target = repository / served_name
        if target.exists():
            old = repository / f".{served_name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(staged, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_model(repository: Path, served_name: str) -> None:
    shutil.rmtree(repository / served_name, ignore_errors=True)
