"""`kbot series show`: table, --json, several series, errors; a Message-ID via public-inbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli import main

CORPUS = Path(__file__).resolve().parent / "corpus"
SEED_COVER = "20210503150854.1144255-1-vkuznets@redhat.com"


def test_show_table(seed_mbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["series", "show", str(seed_mbox)]) == 0
    out = capsys.readouterr().out
    assert "v1 KVM: nVMX: Fix migration of nested guests when eVMCS is in use" in out
    assert "patches: 4/4 (complete)" in out
    rows = [ln for ln in out.splitlines() if ln.strip().startswith(("1/4", "2/4", "3/4", "4/4"))]
    assert len(rows) == 4
    assert rows[0].split()[1] == "8b73a4300a95"  # patch-id prefix
    assert rows[3].split()[2] == "2"  # 4/4 touches two files


def test_show_json_one_object(seed_mbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["series", "show", "--json", str(seed_mbox)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, dict)
    for key in ("version", "title", "complete", "missing", "base_commit", "change_id", "cover",
                "patches"):
        assert key in doc
    assert doc["cover"]["message_id"] == SEED_COVER
    assert [p["index"] for p in doc["patches"]] == [1, 2, 3, 4]
    p = doc["patches"][0]
    assert set(p) >= {"index", "total", "message_id", "subject", "author", "patch_id", "files",
                      "trailers"}
    assert {"name": "Signed-off-by", "value": "Vitaly Kuznetsov <vkuznets@redhat.com>",
            "source": ""} in p["trailers"]


def test_show_json_several_newest_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["series", "show", "--json", str(CORPUS / "v1-then-v2.mbox")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, list) and [s["version"] for s in doc] == [2, 1]


def test_show_incomplete_lists_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["series", "show", str(CORPUS / "missing-patch.mbox")]) == 0
    assert "INCOMPLETE, missing [2]" in capsys.readouterr().out


def test_show_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["series", "show", str(tmp_path / "nope.mbox")]) == 2
    assert "no such file, and not a Message-ID" in capsys.readouterr().err
    empty = tmp_path / "announce.mbox"
    empty.write_text("From x Thu Jan  1 00:00:00 1970\nFrom: a@b.c\nSubject: hi\n"
                     "Message-Id: <hi@b.c>\n\nno patch here\n")
    assert main(["series", "show", str(empty)]) == 2
    assert "no patch series found (1 messages read)" in capsys.readouterr().err


def test_show_reports_skipped_messages(tmp_path: Path, seed_mbox: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mbox"
    bad.write_bytes(seed_mbox.read_bytes() + b"From x Thu Jan  1 00:00:00 1970\n"
                    b"From: a@b.c\nSubject: [PATCH] no id\n\nbody\n")
    assert main(["series", "show", str(bad)]) == 0
    captured = capsys.readouterr()
    assert "patches: 4/4 (complete)" in captured.out
    assert "skipped" in captured.err and "no Message-ID" in captured.err


@pytest.mark.integration
def test_show_message_id_from_archive(local_inbox, watch_config, seed_mbox: Path,  # type: ignore[no-untyped-def]
                                      capsys: pytest.CaptureFixture[str]) -> None:
    local_inbox.deliver_mbox(seed_mbox, "kvm")
    cfg = watch_config()
    code = main(["-c", str(cfg.source), "series", "show", "--json", f"<{SEED_COVER}>"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["cover"]["message_id"] == SEED_COVER and len(doc["patches"]) == 4
