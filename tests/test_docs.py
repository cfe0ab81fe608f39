"""The project's copies of the agreed contracts stay in step with `../shared/`."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def test_protocol_md_starts_with_the_agreed_text() -> None:
    agreed = SHARED / "PROTOCOL.md"
    if not agreed.exists():
        pytest.skip("no ../shared/ beside this checkout")
    ours = (ROOT / "PROTOCOL.md").read_text()
    assert ours.startswith(agreed.read_text()), "PROTOCOL.md drifted from ../shared/PROTOCOL.md"
