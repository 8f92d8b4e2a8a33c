import sqlite3

from rlaif.engine.cache import Cache, request_key


def test_put_get_persist_and_wal(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = Cache(path)
    cache.put_many("generate", [("k1", {"text": "hi"}), ("k2", {"text": "ho"})])
    assert cache.get("k1") == {"text": "hi"} and cache.get("missing") is None
    assert cache.get_many(["k1", "k2", "k3"]) == {"k1": {"text": "hi"}, "k2": {"text": "ho"}}
    cache.close()
    again = Cache(path)  # survives the process / connection
    assert len(again) == 2 and again.get("k2") == {"text": "ho"}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_request_key_is_canonical_and_sensitive():
    base = {"messages": [{"role": "user", "content": "x"}], "params": {"a": 1, "b": 2}}
    same = {"params": {"b": 2, "a": 1}, "messages": [{"role": "user", "content": "x"}]}
    assert request_key("generate", "t", "m", base) == request_key("generate", "t", "m", same)
    assert request_key("generate", "t", "m", base) != request_key("generate", "t", "m2", base)
    changed = {**base, "messages": [{"role": "user", "content": "y"}]}
    assert request_key("generate", "t", "m", base) != request_key("generate", "t", "m", changed)


def test_many_keys_are_fetched_in_chunks(tmp_path):
    cache = Cache(None)
    cache.put_many("generate", [(f"k{i}", {"i": i}) for i in range(1200)])
    got = cache.get_many([f"k{i}" for i in range(1300)])
    assert len(got) == 1200 and got["k1199"] == {"i": 1199}
