"""The cached pieces of the options form: what they hold and what the cache counts."""

from __future__ import annotations

import zlib

import pytest

from aicoe_spawner import form_view
from aicoe_spawner.form_view import Segment

pytestmark = pytest.mark.unit


def test_segment_keeps_its_text_once_asked_and_counts_it():
    segment = Segment("ünïcødé " * 1000)
    before = segment.size
    assert before == len("ünïcødé ".encode() * 1000)
    text = segment.text
    assert text == "ünïcødé " * 1000
    assert segment.text is text  # decoded once, not per request
    assert segment.size > before + len(text)  # the text is held, and counted


def test_compressed_segments_join_into_one_deflate_stream():
    parts = [Segment("<p>first</p>"), Segment('"/hub/aicoe/form-state/ü"'), Segment("<p>end</p>")]
    body = b"".join(p.compressed for p in parts)
    assert zlib.decompressobj(-15).decompress(body) == b"".join(p.data for p in parts)


def test_the_form_cache_stays_under_its_byte_cap_with_texts_held(monkeypatch):
    monkeypatch.setattr(form_view, "_rendered_forms", form_view.OrderedDict())
    monkeypatch.setattr(form_view, "_RENDERED_FORMS_MAX_BYTES", 1_000_000)
    for n in range(10):
        a, b = Segment("a" * 100_000), Segment("b" * 100_000)
        form_view._rendered_forms[n] = (a, b)
        assert a.text and b.text  # as the string path does
        form_view._trim_rendered_forms()
    total = sum(a.size + b.size for a, b in form_view._rendered_forms.values())
    assert total <= 1_000_000
    # data and text of 200,000 bytes each: two forms fit, the oldest went first
    assert list(form_view._rendered_forms) == [8, 9]
