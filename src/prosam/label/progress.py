"""The progress bar of the long commands (tqdm on stderr), or a stand-in that only prints."""

from __future__ import annotations

from typing import Any


class NoBar:
    """What :func:`progress_bar` gives when disabled: ``write`` prints, the rest does nothing."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kwargs: Any) -> None: ...

    def write(self, text: str, file: Any = None) -> None:
        print(text, file=file)

    def close(self) -> None: ...


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar over ``total`` images (``initial`` already done), or a :class:`NoBar`."""
    if not enabled:
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1
    )
