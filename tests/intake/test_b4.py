"""b4 (kernel.org's tool) is the reference: on every mbox of the corpus and the seed thread,
kbot's newest revision has the same patches, in the same order, as `b4 am` writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bot import proc
from bot.intake.mail import parse_message
from bot.intake.mbox import iter_raw
from bot.intake.series import assemble

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parent / "corpus"
B4 = Path(sys.executable).parent / "b4"
MBOXES = sorted(CORPUS.glob("*.mbox"))


def b4_am(mbox: Path, tmp: Path) -> list[tuple[str, str]]:
    """(Message-ID, patch-id) of each patch `b4 am` picks, in its order."""
    out = tmp / "out"
    res = proc.run(
        [B4, "--offline-mode", "--quiet", "am", "--use-local-mbox", str(mbox), "--outdir",
         str(out), "--mbox-name", "series", "--no-add-trailers"],
        timeout=120, env=proc.clean_env({"HOME": str(tmp), "XDG_CACHE_HOME": str(tmp / "c"),
                                         "XDG_CONFIG_HOME": str(tmp / "cfg")}),
        cwd=tmp, check=True,
    )
    picked = out / "series.mbx"
    assert picked.is_file(), res.describe()
    rows = []
    for raw in iter_raw(picked):
        m = parse_message(raw)
        [series] = assemble([m])  # one patch alone: gives its patch-id the same way
        rows.append((m.msgid, series.patches[0].patch_id))
    return rows


def kbot_newest(mbox: Path) -> list[tuple[str, str]]:
    series = assemble(parse_message(r) for r in iter_raw(mbox))
    top = max(s.version for s in series)
    [newest] = [s for s in series if s.version == top]
    return [(p.message_id, p.patch_id) for p in newest.patches]


@pytest.mark.parametrize("mbox", [*MBOXES, None], ids=[*(p.stem for p in MBOXES), "seed"])
def test_same_patches_as_b4(mbox: Path | None, seed_mbox: Path, tmp_path: Path) -> None:
    path = mbox or seed_mbox
    ours = kbot_newest(path)
    theirs = b4_am(path, tmp_path)
    if path.stem == "resend-duplicate":
        # A resend of 2/2 with the same content: b4 keeps both ("assume additional patch") and
        # numbers the series 1..3; kbot drops the copy with the same patch-id, with a note.
        assert [pid for _, pid in theirs] == [ours[0][1], ours[1][1], ours[1][1]]
        return
    assert ours == theirs
