"""Naming rule: every server name becomes a legal, unique entry name (docs/tree.md)."""

from hypothesis import given, strategies as st

from basemount_py.tree.naming import MAX_NAME_BYTES, SLASH_SUBSTITUTE, sanitize, unique_names


def legal(name: str) -> bool:
    data = name.encode("utf-8")
    return 0 < len(data) <= MAX_NAME_BYTES and b"/" not in data and b"\0" not in data and name not in (".", "..")


def test_ordinary_names_are_kept_verbatim():
    for name in ["HiSeq X Ten: TruSeq PCR-Free (16 replicates of NA12878)", "a b", "Ünïcödé", "x(2)"]:
        assert sanitize(name) == name


def test_hostile_names():
    assert sanitize("a/b") == f"a{SLASH_SUBSTITUTE}b"
    assert sanitize("a\0b") == "a_b"
    assert sanitize("line\nbreak") == "line_break"
    assert sanitize("") == "_"
    assert sanitize(None) == "_"
    assert sanitize(".") == "_."
    assert sanitize("..") == "_.."
    assert sanitize("../../etc/passwd") == f"..{SLASH_SUBSTITUTE}..{SLASH_SUBSTITUTE}etc{SLASH_SUBSTITUTE}passwd"
    assert sanitize("bad\ud800surrogate") == "bad\ufffdsurrogate"


def test_long_names_are_cut_and_stay_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(sanitize(a).encode()) <= MAX_NAME_BYTES
    assert sanitize(a) != sanitize(b)
    multibyte = "é" * 200  # 400 bytes: the cut must not split a character
    assert len(sanitize(multibyte).encode()) <= MAX_NAME_BYTES
    sanitize(multibyte).encode("utf-8")


@given(st.text(max_size=400))
def test_any_text_becomes_a_legal_name(name):
    assert legal(sanitize(name))


def test_duplicates_are_suffixed_by_ascending_id():
    names = unique_names([("30", "S"), ("4", "S"), ("100", "S"), ("7", "T")])
    assert names == {"4": "S", "30": "S (2)", "100": "S (3)", "7": "T"}


def test_suffix_does_not_collide_with_a_real_name_or_reserved():
    names = unique_names([("1", "S"), ("2", "S"), ("3", "S (2)"), ("4", ".json")], reserved={".json"})
    assert len(set(names.values())) == 4
    assert names["1"] == "S"
    assert names["4"] == ".json (2)"


@given(st.lists(st.tuples(st.integers(0, 10**9).map(str), st.text(max_size=300)), max_size=30, unique_by=lambda t: t[0]))
def test_unique_names_are_unique_and_legal(items):
    names = unique_names(items)
    assert len(set(names.values())) == len(items)
    assert all(legal(n) for n in names.values())
