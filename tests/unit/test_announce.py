"""The banner file as the hub reads it: missing means none, and its text is never HTML."""

from __future__ import annotations

from hubstack.hub.announce import MAX_CHARS, read_announcement


def test_no_file_means_no_banner(tmp_path):
    assert read_announcement(None, tmp_path / "announcement.txt") == ""


def test_text_is_escaped_and_bounded(tmp_path):
    path = tmp_path / "announcement.txt"
    path.write_text("<script>alert(1)</script> restart please\n" + "x" * (2 * MAX_CHARS))
    shown = read_announcement(None, path)
    assert shown.startswith("&lt;script&gt;alert(1)&lt;/script&gt; restart please")
    assert "<" not in shown and len(shown) < 2 * MAX_CHARS
